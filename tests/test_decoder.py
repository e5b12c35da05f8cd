import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import config as model_config, decoder as dec
from tests import reference


def tiny(**overrides):
  return model_config.DecoderConfig(**{**model_config.preset("tiny"), **overrides})


def init(cfg, seed=0):
  model = dec.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))["params"])
  return model, params


@pytest.mark.parametrize("tie,block", [(True, 0), (False, 0), (False, 3)],
                         ids=["tied", "untied", "query-blocks"])
def test_matches_numpy_reference_with_packing_and_padding(tie, block):
  cfg = tiny(tie_embeddings=tie, num_layers=2, attention_block=block)
  model, params = init(cfg)
  # Two packed documents (positions restart) then two padding positions.
  tokens = np.array([5, 17, 3, 99, 42, 7, 8, 0, 0], np.int32)
  segments = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0], np.int32)
  positions = np.array([0, 1, 2, 3, 0, 1, 2, 0, 0], np.int32)
  got = model.apply({"params": params}, tokens[None], positions[None], segments[None])[0]
  want = reference.decoder_logits(jax.device_get(params), cfg, tokens, positions, segments)
  real = segments != 0
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, rtol=1e-4)
  assert np.isfinite(np.asarray(got)).all()  # padding rows stay finite


def test_causal_future_tokens_do_not_change_past_logits():
  model, params = init(tiny())
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 512, (2, 16)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 9:] = rng.integers(0, 512, (2, 7))
  a = model.apply({"params": params}, tokens)
  b = model.apply({"params": params}, changed)
  np.testing.assert_array_equal(np.asarray(a[:, :9]), np.asarray(b[:, :9]))
  assert np.abs(np.asarray(a[:, 9:] - b[:, 9:])).max() > 1e-3


def test_causal_by_gradient():
  """d logits[t] / d (input embedding row of a future token) is zero (untied, so the
  unembedding does not route gradient to every row)."""
  model, params = init(tiny(tie_embeddings=False))
  tokens = jnp.arange(10, 20, dtype=jnp.int32)[None]

  def logit_sum_at(t, emb):
    p = {**params, "embedding": emb}
    return model.apply({"params": p}, tokens)[0, t].sum()

  grad = jax.grad(lambda emb: logit_sum_at(4, emb))(params["embedding"])
  future_rows = np.asarray(grad)[15:20]  # tokens 15..19 sit at positions 5..9
  past_rows = np.asarray(grad)[10:15]
  assert np.abs(future_rows).max() == 0.0
  assert np.abs(past_rows).max() > 0.0


def test_packed_documents_do_not_attend_to_each_other():
  model, params = init(tiny())
  doc_a, doc_b = np.arange(3, 10, dtype=np.int32), np.arange(50, 56, dtype=np.int32)
  packed = np.concatenate([doc_a, doc_b])[None]
  seg = np.array([[1] * 7 + [2] * 6], np.int32)
  pos = np.array([list(range(7)) + list(range(6))], np.int32)
  both = model.apply({"params": params}, packed, pos, seg)[0]
  alone_a = model.apply({"params": params}, doc_a[None])[0]
  alone_b = model.apply({"params": params}, doc_b[None])[0]
  np.testing.assert_allclose(both[:7], alone_a, atol=1e-5)
  np.testing.assert_allclose(both[7:], alone_b, atol=1e-5)


def test_scan_and_remat_match_unrolled_layers():
  cfg = tiny()
  model, params = init(cfg)
  tokens = np.random.default_rng(1).integers(0, 512, (2, 12)).astype(np.int32)
  scanned = dec.stack_layer_params(params, cfg.num_layers)
  ref_logits = model.apply({"params": params}, tokens)
  g_ref = jax.jit(jax.grad(lambda p: model.apply({"params": p}, tokens).mean()))(params)
  for remat in ("none", "full", "dots_no_batch"):
    m = dec.Decoder(tiny(scan_layers=True, remat=remat))
    logits = jax.jit(lambda p: m.apply({"params": p}, tokens))(scanned)
    grads = jax.jit(jax.grad(lambda p: m.apply({"params": p}, tokens).mean()))(scanned)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 dec.unstack_layer_params(grads), g_ref)


def test_scan_init_layout_has_layers_axis_and_names():
  model = dec.Decoder(tiny(scan_layers=True))
  boxed = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["layers"]["attention"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")
  assert tuple(specs["layers"]["mlp"]["down"]["kernel"]) == ("layers", "mlp", "embed")
  assert tuple(specs["embedding"]) == ("vocab", "embed")


def test_bfloat16_compute_close_to_float32():
  model, params = init(tiny())
  tokens = np.random.default_rng(2).integers(0, 512, (2, 12)).astype(np.int32)
  f32 = model.apply({"params": params}, tokens)
  bf16 = dec.Decoder(tiny(dtype="bfloat16")).apply({"params": params}, tokens)
  assert bf16.dtype == jnp.float32  # logits are upcast for the loss
  assert np.abs(np.asarray(bf16 - f32)).max() < 0.1


def test_param_count_matches_formula_and_llama2_7b():
  cfg = tiny()
  _, params = init(cfg)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  seven_b = model_config.DecoderConfig(**model_config.preset("7b"))
  assert seven_b.num_params() == 6_738_415_616  # Llama-2-7B, published count
  abstract = jax.eval_shape(dec.Decoder(seven_b).init, jax.random.PRNGKey(0),
                            jnp.ones((1, 4), jnp.int32))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract))) == 6_738_415_616


def test_bad_config_names_the_key():
  with pytest.raises(ValueError, match="num_kv_heads"):
    tiny(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="model.dtype"):
    tiny(dtype="float8")
  with pytest.raises(ValueError, match="model.attention_block"):
    tiny(attention_block=-1)


@pytest.mark.parametrize("num_in_dims", [1, 2])
def test_dense_gradients_are_the_matrix_products(num_in_dims):
  """`dense`'s written-out backward (dx = g W^T, dW = x^T g) against numpy, on
  (batch, length, in...) inputs; and equal to autodiff of the plain contraction."""
  rng = np.random.default_rng(num_in_dims)
  in_shape = {1: (10,), 2: (6, 4)}[num_in_dims]
  x = rng.normal(size=(3, 5, *in_shape)).astype(np.float32)
  w = rng.normal(size=(*in_shape, 7)).astype(np.float32)
  g = rng.normal(size=(3, 5, 7)).astype(np.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)
  dx, dw = jax.grad(loss(lambda x, w: dec.dense(x, w, num_in_dims)), (0, 1))(x, w)
  x2, w2 = x.reshape(15, -1).astype(np.float64), w.reshape(-1, 7).astype(np.float64)
  g2 = g.reshape(15, 7).astype(np.float64)
  np.testing.assert_allclose(np.asarray(dx), (g2 @ w2.T).reshape(x.shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), (x2.T @ g2).reshape(w.shape), rtol=1e-5, atol=1e-5)
  auto = jax.grad(loss(lambda x, w: jnp.tensordot(x, w, num_in_dims)), (0, 1))(x, w)
  for ours, theirs in zip((dx, dw), auto):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, 3, 6], ids=["global", "window-3", "window-6"])
def test_query_blocks_give_the_same_logits_and_gradients(window):
  """Causal attention in query blocks (skipping the masked key blocks, and in local
  layers the keys before the window) against one block: the same logits and
  parameter gradients, packed documents included."""
  tokens = np.random.default_rng(2).integers(0, 512, (2, 16)).astype(np.int32)
  segments = np.array([[1] * 16, [1] * 5 + [2] * 11], np.int32)
  positions = np.array([list(range(16)), list(range(5)) + list(range(11))], np.int32)
  results = []
  for block in (0, 4):
    model, params = init(tiny(attention_block=block, sliding_window=window, attention_pattern="lg"))
    fn = lambda p, m=model: m.apply({"params": p}, tokens, positions, segments)
    results.append((fn(params), jax.grad(lambda p, fn=fn: jnp.mean(fn(p) ** 2))(params)))
  (full, g_full), (blocked, g_blocked) = results
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(full), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               g_blocked, g_full)


# The Gemma 2/3, Qwen3, OLMo 2 and Mistral variants, each small enough to see.
VARIANTS = {
    "window": dict(sliding_window=3),
    "local-global+local-rope": dict(sliding_window=3, attention_pattern="lg", rope_local_theta=100.0),
    "gemma2": dict(norm_placement="sandwich", norm_offset=1.0, query_scale=24.0, attn_softcap=2.0,
                   logit_softcap=5.0, sliding_window=2, attention_pattern="lg"),
    "qk-norm-per-head": dict(qk_norm="head"),
    "olmo2": dict(norm_placement="post", qk_norm="full"),
}


def _noisy_norms(params, seed=3):
  """Norm scales drawn around their init, so a misplaced or mis-offset norm shows."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype)
      if path[-1].key == "scale" else x, params)


@pytest.mark.parametrize("overrides", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variants_match_numpy_reference(overrides):
  cfg = tiny(**overrides)
  model, params = init(cfg)
  params = _noisy_norms(params)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  tokens = np.array([5, 17, 3, 99, 42, 7, 8, 11, 2, 0, 0], np.int32)
  segments = np.array([1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0], np.int32)
  positions = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 0], np.int32)
  got = model.apply({"params": params}, tokens[None], positions[None], segments[None])[0]
  want = reference.decoder_logits(jax.device_get(params), cfg, tokens, positions, segments)
  real = segments != 0
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, rtol=1e-4)


def test_a_local_layer_sees_exactly_the_window():
  cfg = tiny(num_layers=1, sliding_window=4)
  model, params = init(cfg)
  tokens = np.random.default_rng(4).integers(0, 512, (1, 10)).astype(np.int32)
  changed = tokens.copy()
  changed[0, 0] = (tokens[0, 0] + 1) % 512
  a, b = (np.asarray(model.apply({"params": params}, t))[0] for t in (tokens, changed))
  differs = np.abs(a - b).max(-1) > 1e-6
  assert differs.tolist() == [True] * 4 + [False] * 6  # token 0 is in view up to position 3
  assert cfg.flops_per_token(10) < tiny(num_layers=1).flops_per_token(10)


def _decode_logits(model, params, tokens, positions, valid, cache, index):
  def fn(m, *args):
    hidden, new_cache = m.decode(*args)
    return m.logits(hidden), new_cache
  return model.apply({"params": params}, tokens, positions, valid, cache, index, method=fn)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_kv_cache_prefill_and_decode_past_the_window_match_the_forward(scan):
  """Mixed local/global layers with their own RoPE base; row 1 is left-padded by 2
  slots, as the sampler lays out prompts of different lengths."""
  cfg = tiny(num_layers=3, sliding_window=3, attention_pattern="llg", rope_local_theta=500.0)
  model, params = init(cfg)
  params = _noisy_norms(params)
  tokens = np.random.default_rng(5).integers(0, 512, (2, 12)).astype(np.int32)
  full = np.asarray(model.apply({"params": params}, tokens))
  if scan:
    model = dec.Decoder(tiny(num_layers=3, sliding_window=3, attention_pattern="llg",
                             rope_local_theta=500.0, scan_layers=True))
    params = dec.stack_layer_params(params, 3)
  pad = np.array([0, 2])
  slots, prefill = 16, 6
  cache = dec.init_cache(model.cfg, 2, slots)
  # Prefill: row 0 holds tokens 0..5 at slots 0..5; row 1 tokens 0..3 at slots 2..5.
  window_tokens = np.stack([tokens[0, :prefill], np.r_[[0, 0], tokens[1, :prefill - 2]]])
  positions = np.maximum(np.arange(prefill)[None] - pad[:, None], 0)
  valid = np.arange(slots)[None] < prefill
  valid = valid & (np.arange(slots)[None] >= pad[:, None])
  logits, cache = _decode_logits(model, params, window_tokens, positions, valid, cache, 0)
  np.testing.assert_allclose(logits[0], full[0, :prefill], atol=1e-4)
  np.testing.assert_allclose(logits[1, 2:], full[1, :prefill - 2], atol=1e-4)
  step = jax.jit(lambda *a: _decode_logits(model, params, *a))
  for i in range(prefill, 12):  # one token a step, well past the window of 3
    next_tokens = np.array([[tokens[0, i]], [tokens[1, i - 2]]])
    valid = valid | (np.arange(slots)[None] == i)
    logits, cache = step(next_tokens, (i - pad)[:, None], valid, cache, i)
    np.testing.assert_allclose(logits[0, 0], full[0, i], atol=1e-4)
    np.testing.assert_allclose(logits[1, 0], full[1, i - 2], atol=1e-4)
