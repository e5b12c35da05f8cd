"""Plain-numpy references, written independently of the library code (float64)."""

import numpy as np


def log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def rms_norm(x, scale, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def rope(x, positions, theta):
  """x: [L, N, E]; rotate pairs (i, i + E/2) by angle pos * theta^(-2i/E)."""
  e = x.shape[-1]
  half = e // 2
  out = np.empty_like(x)
  for l in range(x.shape[0]):
    for i in range(half):
      angle = positions[l] * theta ** (-i / half)
      c, s = np.cos(angle), np.sin(angle)
      a, b = x[l, :, i], x[l, :, i + half]
      out[l, :, i] = a * c - b * s
      out[l, :, i + half] = b * c + a * s
  return out


def decoder_logits(params, cfg, tokens, positions, segment_ids):
  """Forward pass of one row, written out loop by loop. params: unscanned numpy tree.

  Covers the variants of the Gemma 2/3, Qwen3 and OLMo 2 families too: norm
  placement, q/k norms, the query scale, attention soft-capping, sliding-window
  layers (`cfg.local_layers()`) with their own RoPE base, final soft-capping.
  """
  p = lambda *path: _get(params, path)
  d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  length = len(tokens)
  norm = lambda x, *path: rms_norm(x, cfg.norm_offset + p(*path), cfg.norm_eps)
  x = p("embedding")[tokens] * (np.sqrt(d) if cfg.embed_scale else 1.0)
  for layer in range(cfg.num_layers):
    lp = lambda *path: (f"layer_{layer}", *path)
    local = cfg.local_layers()[layer]
    theta = cfg.rope_local_theta if local and cfg.rope_local_theta else cfg.rope_theta
    pre, post = cfg.norm_placement != "post", cfg.norm_placement != "pre"
    y = norm(x, *lp("attention_norm", "scale")) if pre else x
    q = np.einsum("ld,dhe->lhe", y, p(*lp("attention", "query", "kernel")))
    kk = np.einsum("ld,dke->lke", y, p(*lp("attention", "key", "kernel")))
    v = np.einsum("ld,dke->lke", y, p(*lp("attention", "value", "kernel")))
    if cfg.qk_norm == "head":
      q = norm(q, *lp("attention", "query_norm", "norm", "scale"))
      kk = norm(kk, *lp("attention", "key_norm", "norm", "scale"))
    elif cfg.qk_norm == "full":
      q = norm(q.reshape(length, -1), *lp("attention", "query_norm", "norm", "scale")).reshape(q.shape)
      kk = norm(kk.reshape(length, -1), *lp("attention", "key_norm", "norm", "scale")).reshape(kk.shape)
    q, kk = rope(q, positions, theta), rope(kk, positions, theta)
    out = np.zeros((length, h, e))
    for head in range(h):
      kv_head = head // (h // k)
      for i in range(length):
        visible = [j for j in range(i + 1)
                   if segment_ids[j] == segment_ids[i] and segment_ids[j] != 0
                   and (not local or i - j < cfg.sliding_window)]
        if not visible:
          continue
        scores = np.array([q[i, head] @ kk[j, kv_head] for j in visible])
        scores = scores / np.sqrt(cfg.query_scale or e)
        if cfg.attn_softcap:
          scores = cfg.attn_softcap * np.tanh(scores / cfg.attn_softcap)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        out[i, head] = sum(wj * v[j, kv_head] for wj, j in zip(w, visible))
    attended = np.einsum("lhe,hed->ld", out, p(*lp("attention", "out", "kernel")))
    x = x + (norm(attended, *lp("attention_post_norm", "scale")) if post else attended)
    y = norm(x, *lp("mlp_norm", "scale")) if pre else x
    gate = y @ p(*lp("mlp", "gate", "kernel"))
    hidden = gate / (1 + np.exp(-gate)) * (y @ p(*lp("mlp", "up", "kernel")))
    out = hidden @ p(*lp("mlp", "down", "kernel"))
    x = x + (norm(out, *lp("mlp_post_norm", "scale")) if post else out)
  x = norm(x, "final_norm", "scale")
  unembed = p("embedding").T if cfg.tie_embeddings else p("unembed", "kernel")
  logits = x @ unembed
  if cfg.logit_softcap:
    logits = cfg.logit_softcap * np.tanh(logits / cfg.logit_softcap)
  return logits


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree, np.float64)
