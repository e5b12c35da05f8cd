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
  """Forward pass of one row, written out loop by loop. params: unscanned numpy tree."""
  p = lambda *path: _get(params, path)
  d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  length = len(tokens)
  x = p("embedding")[tokens] * np.sqrt(d)
  for layer in range(cfg.num_layers):
    lp = lambda *path: p(f"layer_{layer}", *path)
    y = rms_norm(x, lp("attention_norm", "scale"), cfg.norm_eps)
    q = np.einsum("ld,dhe->lhe", y, lp("attention", "query", "kernel"))
    kk = np.einsum("ld,dke->lke", y, lp("attention", "key", "kernel"))
    v = np.einsum("ld,dke->lke", y, lp("attention", "value", "kernel"))
    q, kk = rope(q, positions, cfg.rope_theta), rope(kk, positions, cfg.rope_theta)
    out = np.zeros((length, h, e))
    for head in range(h):
      kv_head = head // (h // k)
      for i in range(length):
        visible = [j for j in range(i + 1)
                   if segment_ids[j] == segment_ids[i] and segment_ids[j] != 0]
        if not visible:
          continue
        scores = np.array([q[i, head] @ kk[j, kv_head] for j in visible]) / np.sqrt(e)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        out[i, head] = sum(wj * v[j, kv_head] for wj, j in zip(w, visible))
    x = x + np.einsum("lhe,hed->ld", out, lp("attention", "out", "kernel"))
    y = rms_norm(x, lp("mlp_norm", "scale"), cfg.norm_eps)
    gate = y @ lp("mlp", "gate", "kernel")
    hidden = gate / (1 + np.exp(-gate)) * (y @ lp("mlp", "up", "kernel"))
    x = x + hidden @ lp("mlp", "down", "kernel")
  x = rms_norm(x, p("final_norm", "scale"), cfg.norm_eps)
  unembed = p("embedding").T if cfg.tie_embeddings else p("unembed", "kernel")
  return x @ unembed


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree, np.float64)
