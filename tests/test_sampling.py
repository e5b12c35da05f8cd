import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import sampling
from research.models import config as model_config
from research.models.decoder import Decoder
from research.training import partitioning
from tests import reference

EOS, PAD = 1, 0


def make_model(seed=0, **overrides):
  cfg = model_config.DecoderConfig(**{**model_config.preset("tiny"), **overrides})
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))["params"])
  # Sharper than at init, so greedy paths are decided by clear margins, not ties.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)
  return model, params


def random_prompts(rng, lengths):
  return [[2] + list(rng.integers(4, 512, n - 1)) for n in lengths]


def full_forward_logits(model, params, prompt, response):
  tokens = np.asarray([list(prompt) + list(response)], np.int32)
  return np.asarray(model.apply({"params": params}, tokens)[0], np.float64)


@pytest.mark.parametrize("overrides,segment", [
    ({}, 0), ({"tie_embeddings": True}, 0), ({"scan_layers": True}, 0),
    ({}, 5), ({"scan_layers": True}, 4)],  # the cache grown every 5 / 4 new tokens
    ids=["untied", "tied", "scanned", "segmented", "scanned-segmented"])
def test_greedy_with_cache_equals_full_forward_argmax(overrides, segment):
  model, params = make_model(1, **overrides)
  rng = np.random.default_rng(0)
  prompts = random_prompts(rng, [1, 3, 7, 16, 17, 2])  # spans two prompt buckets
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD, segment=segment)
  out = sampler(params, prompts, jax.random.PRNGKey(0),
                sampling.SamplingConfig(max_new_tokens=12, greedy=True))
  tokens, lengths = sampling.right_pad(prompts, PAD)
  want, want_lengths = sampling.greedy_uncached(
      lambda p, t: model.apply({"params": p}, t), params, tokens, lengths, 12, EOS, PAD)
  np.testing.assert_array_equal(np.asarray(out.tokens), want)
  np.testing.assert_array_equal(np.asarray(out.lengths), want_lengths)


def test_segmented_decoding_samples_exactly_as_one_loop():
  """Growing the cache between segments changes nothing: the same samples, log-probs,
  lengths and early stops (EOS is a token row 0 draws at step 8, past a segment)."""
  model, params = make_model(3)
  prompts = random_prompts(np.random.default_rng(5), [4, 9, 1, 12])
  cfg = sampling.SamplingConfig(max_new_tokens=23, temperature=1.0, top_k=50)
  draw = lambda eos, segment: sampling.Sampler(model, eos_id=eos, pad_id=PAD, segment=segment)(
      params, prompts, jax.random.PRNGKey(2), cfg)
  eos = int(np.asarray(draw(-1, 0).tokens)[0, 7])
  one, segmented = draw(eos, 0), draw(eos, 6)
  assert bool(one.ended[0]) and int(one.lengths[0]) <= 8
  for name in ("tokens", "mask", "lengths", "ended"):
    np.testing.assert_array_equal(np.asarray(getattr(one, name)),
                                  np.asarray(getattr(segmented, name)))
  np.testing.assert_allclose(np.asarray(one.model_logprobs),
                             np.asarray(segmented.model_logprobs), atol=1e-5)
  assert sampling.segment_ends(23, 6) == [6, 12, 18, 23] and sampling.segment_ends(5, 6) == [5]


@pytest.mark.parametrize("overrides,segment", [({}, 5), ({"scan_layers": True}, 0)],
                         ids=["segmented", "scanned"])
def test_shared_prefill_samples_as_repeated_prompts(overrides, segment):
  """G samples per prompt from one prefill = the prompts repeated G times: the same
  tokens and log-probs (rows i*G .. i*G+G-1 for prompt i), for less compute."""
  model, params = make_model(4, **overrides)
  prompts = random_prompts(np.random.default_rng(6), [3, 11, 1, 6])
  cfg = sampling.SamplingConfig(max_new_tokens=9, temperature=1.0, top_k=40)
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD, segment=segment)
  shared = sampler(params, prompts, jax.random.PRNGKey(4), cfg, samples_per_prompt=3)
  repeated = sampler(params, [p for p in prompts for _ in range(3)], jax.random.PRNGKey(4), cfg)
  assert shared.tokens.shape == (12, 9)
  for name in ("prompts", "prompt_lengths", "tokens", "mask", "lengths", "ended"):
    np.testing.assert_array_equal(np.asarray(getattr(shared, name)),
                                  np.asarray(getattr(repeated, name)))
  for name in ("logprobs", "model_logprobs"):
    np.testing.assert_allclose(np.asarray(getattr(shared, name)),
                               np.asarray(getattr(repeated, name)), atol=1e-5)
  assert len(set(map(tuple, np.asarray(shared.tokens)[:3]))) > 1  # G different samples
  # The prefill ran on the 4 prompts, not 12 rows: fewer FLOPs in one compiled call.
  args = lambda b: (params, jnp.zeros((b, 16), jnp.int32), jnp.ones((b,), jnp.int32),
                    jax.random.PRNGKey(0))
  flops = lambda g, b: sampler._fn(cfg, g).lower(*args(b)).compile().cost_analysis()["flops"]
  assert flops(3, 4) < 0.6 * flops(1, 12)


def test_left_and_right_padded_inputs_give_the_same_samples():
  model, params = make_model(2)
  prompts = random_prompts(np.random.default_rng(1), [2, 5, 9])
  right, lengths = sampling.right_pad(prompts, PAD)
  left = np.full_like(right, PAD)
  for i, p in enumerate(prompts):
    left[i, right.shape[1] - len(p):] = p
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=0.9, top_p=0.95)
  a = sampler(params, right, jax.random.PRNGKey(3), cfg, lengths=lengths, padding="right")
  b = sampler(params, left, jax.random.PRNGKey(3), cfg, lengths=lengths, padding="left")
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


def numpy_filter(logits, temperature, top_k, top_p):
  """Independent reference: scale, keep top-k (ties kept), then the nucleus of
  what top-k left (renormalised), as sequential warpers do."""
  x = np.asarray(logits, np.float64) / temperature
  keep = np.ones_like(x, bool)
  if top_k:
    kth = np.sort(x)[::-1][top_k - 1]
    keep &= x >= kth
  if top_p < 1.0:
    order = [i for i in np.argsort(-x, kind="stable") if keep[i]]
    probs = np.exp(x[order] - x.max())
    probs /= probs.sum()
    total, threshold = 0.0, None
    for value, prob in zip(x[order], probs):
      threshold = value
      total += prob
      if total >= top_p:
        break
    keep &= x >= threshold
  return np.where(keep, x, -np.inf)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 20, 0.6), (1.0, 1, 1.0), (1.0, 0, 0.05)])
def test_filters_match_numpy(temperature, top_k, top_p):
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 2, (6, 50)).astype(np.float32)
  logits[0, :3] = 5.0  # a tie at the top
  got = np.asarray(sampling.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
  for row in range(6):
    want = numpy_filter(logits[row], temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got[row]), np.isinf(want))
    finite = ~np.isinf(want)
    np.testing.assert_allclose(got[row][finite], want[finite], rtol=1e-6)


def test_draws_follow_the_distribution_and_never_a_removed_token():
  """`sample_from_probs` (inverse CDF, one uniform per row) against the
  probabilities: a chi-square test over 400k draws, a vocabulary that is not a
  multiple of the search block, removed (-inf) tokens, and one-token rows."""
  v = 300
  logits = np.random.default_rng(0).normal(0, 2, (v,)).astype(np.float32)
  logits[::7] = -np.inf
  probs = np.exp(logits - logits[np.isfinite(logits)].max())
  probs /= probs.sum()
  rows = np.stack([np.exp(np.asarray(jax.nn.log_softmax(jnp.asarray(logits))))] * 4000)
  draw = jax.jit(lambda key: sampling.sample_from_probs(key, jnp.asarray(rows), block=64))
  tokens = np.concatenate([np.asarray(draw(k)) for k in jax.random.split(jax.random.PRNGKey(3),
                                                                         100)])
  counts = np.bincount(tokens, minlength=v)
  assert counts[probs == 0].sum() == 0
  expected = probs * len(tokens)
  live = probs > 0
  chi2 = (((counts - expected)[live]) ** 2 / expected[live]).sum()
  dof = live.sum() - 1
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~1e-6 false-alarm rate
  one_hot = np.zeros((3, v), np.float32)
  one_hot[0, 0] = one_hot[1, v - 1] = one_hot[2, 130] = 1.0  # first, last (padded block), middle
  for key in jax.random.split(jax.random.PRNGKey(4), 20):
    np.testing.assert_array_equal(sampling.sample_from_probs(key, jnp.asarray(one_hot)),
                                  [0, v - 1, 130])


def test_argmax_first_is_argmax_with_ties():
  x = np.random.default_rng(1).integers(0, 4, (50, 37)).astype(np.float32)  # many ties
  np.testing.assert_array_equal(sampling.argmax_first(jnp.asarray(x)), np.argmax(x, -1))


def test_logprobs_match_a_full_forward_pass():
  model, params = make_model(3)
  prompts = random_prompts(np.random.default_rng(5), [4, 1, 9])
  cfg = sampling.SamplingConfig(max_new_tokens=10, temperature=0.8, top_k=30, top_p=0.9)
  out = jax.device_get(sampling.Sampler(model, eos_id=EOS, pad_id=PAD)(
      params, prompts, jax.random.PRNGKey(7), cfg))
  for i, prompt in enumerate(prompts):
    n = int(out.lengths[i])
    response = out.tokens[i, :n]
    assert out.mask[i, :n].all() and not out.mask[i, n:].any()
    logits = full_forward_logits(model, params, prompt, response)
    for j, token in enumerate(response):
      row = logits[len(prompt) - 1 + j]
      # KV-cache decoding vs one full pass: float32 sums in another order (~1e-5).
      np.testing.assert_allclose(out.model_logprobs[i, j], reference.log_softmax(row)[token],
                                 atol=4e-5)
      filtered = numpy_filter(row, cfg.temperature, cfg.top_k, cfg.top_p)
      assert np.isfinite(filtered[token]), "sampled a token the filters removed"
      want = filtered[token] - np.log(np.exp(filtered[np.isfinite(filtered)]
                                             - filtered.max()).sum()) - filtered.max()
      np.testing.assert_allclose(out.logprobs[i, j], want, atol=4e-5)


def test_top_k_one_equals_greedy_and_rng_is_reproducible():
  model, params = make_model(4)
  prompts = random_prompts(np.random.default_rng(6), [3, 6, 2, 5])
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)
  greedy = sampler(params, prompts, jax.random.PRNGKey(0),
                   sampling.SamplingConfig(max_new_tokens=10, greedy=True))
  top1 = sampler(params, prompts, jax.random.PRNGKey(9),
                 sampling.SamplingConfig(max_new_tokens=10, top_k=1))
  np.testing.assert_array_equal(np.asarray(greedy.tokens), np.asarray(top1.tokens))
  cfg = sampling.SamplingConfig(max_new_tokens=10, temperature=1.5)
  a = sampler(params, prompts, jax.random.PRNGKey(11), cfg)
  b = sampler(params, prompts, jax.random.PRNGKey(11), cfg)
  c = sampler(params, prompts, jax.random.PRNGKey(12), cfg)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_eos_stops_rows_and_truncation_is_flagged():
  model, params = make_model(5)
  # Make EOS the argmax after one specific token, so row 0 stops at once.
  out = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)(
      params, [[2, 3], [2, 4, 5]], jax.random.PRNGKey(0),
      sampling.SamplingConfig(max_new_tokens=6, greedy=True))
  lengths, ended = np.asarray(out.lengths), np.asarray(out.ended)
  tokens = np.asarray(out.tokens)
  for i in range(2):
    if ended[i]:
      assert tokens[i, lengths[i] - 1] == EOS and (tokens[i, lengths[i]:] == PAD).all()
    else:
      assert lengths[i] == 6 and EOS not in tokens[i]
  # An EOS id that the model emits: every row ends, none longer than needed.
  first = int(tokens[0, 0])
  out2 = sampling.Sampler(model, eos_id=first, pad_id=PAD)(
      params, [[2, 3]], jax.random.PRNGKey(0), sampling.SamplingConfig(max_new_tokens=6,
                                                                       greedy=True))
  assert bool(out2.ended[0]) and int(out2.lengths[0]) == 1
  assert float(out2.logprobs[0, 0]) == 0.0  # greedy: a point mass


def test_one_compilation_per_bucket():
  model, params = make_model(6)
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD, bucket=16)
  cfg = sampling.SamplingConfig(max_new_tokens=5, temperature=1.0)
  rng = np.random.default_rng(7)
  for lengths in ([3, 5], [1, 16], [9, 2]):  # all within the 16-token bucket
    sampler(params, random_prompts(rng, lengths), jax.random.PRNGKey(0), cfg)
  assert sampler.compilations() == 1
  sampler(params, random_prompts(rng, [20, 3]), jax.random.PRNGKey(0), cfg)  # next bucket
  assert sampler.compilations() == 2


def test_too_long_for_the_cache_is_an_error():
  model, params = make_model(7)
  with pytest.raises(ValueError, match="model.max_len"):
    sampling.Sampler(model, eos_id=EOS)(params, [[2] * 10], jax.random.PRNGKey(0),
                                        sampling.SamplingConfig(max_new_tokens=600))


def test_sharded_sampling_matches_single_device(devices):
  model, params = make_model(8)
  prompts = random_prompts(np.random.default_rng(8), [3, 7, 2, 9, 4, 1, 6, 5])
  cfg = sampling.SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9)
  single = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)(params, prompts,
                                                           jax.random.PRNGKey(1), cfg)
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  shardings = partitioning.logical_shardings(boxed, mesh, rules)["params"]
  sharded_params = jax.device_put(params, shardings)
  sampler = sampling.Sampler(model, eos_id=EOS, pad_id=PAD, mesh=mesh, rules=rules)
  sharded = sampler(sharded_params, prompts, jax.random.PRNGKey(1), cfg)
  np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
  # Sharded matmuls reduce in another order: float32 roundoff, ~1e-6 relative.
  np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(single.logprobs),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sharded.model_logprobs),
                             np.asarray(single.model_logprobs), atol=1e-5, rtol=1e-5)
  # The KV cache (per layer: keys batch 8, kv heads 2, head dim 16, slots 16 + 10;
  # values slots before head dim) is constrained to batch over (data, fsdp) and
  # kv heads over tensor.
  batch = partitioning.shard_batch({"p": np.zeros((8, 16), np.int32),
                                    "n": np.ones((8,), np.int32)}, mesh, rules)
  with partitioning.activate(mesh, rules):
    text = sampler._fn(cfg, 1).lower(sharded_params, batch["p"], batch["n"],
                                  jax.random.PRNGKey(0)).as_text()
  shapes = ("<8x2x16x26", "<8x2x26x16")
  constraints = [line for line in text.splitlines()
                 if "sharding_constraint" in line and any(s in line for s in shapes)]
  assert len(constraints) >= 4 and all('[{"data", "fsdp"}, {"tensor"}, {}, {}]' in line
                                       for line in constraints)


def test_sharded_shared_prefill_matches_single_device(devices):
  """Groups on the (2,2,2) mesh: 4 prompts x 2 samples share their prefill (the 4
  rows split over data x fsdp); 3 prompts do not split, so they are repeated."""
  model, params = make_model(9)
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=1.0)
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  sharded_params = jax.device_put(
      params, partitioning.logical_shardings(boxed, mesh, rules)["params"])
  sharded = sampling.Sampler(model, eos_id=EOS, pad_id=PAD, mesh=mesh, rules=rules)
  single = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)
  for n in (4, 3):
    prompts = random_prompts(np.random.default_rng(n), [5, 2, 8, 3][:n])
    want = single(params, prompts, jax.random.PRNGKey(5), cfg, samples_per_prompt=2)
    got = sharded(sharded_params, prompts, jax.random.PRNGKey(5), cfg, samples_per_prompt=2)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.model_logprobs), np.asarray(want.model_logprobs),
                               atol=1e-5, rtol=1e-5)
  assert set(sharded._fns) == {(cfg, 2), (cfg, 1)}  # shared for 4 prompts, repeated for 3


def test_a_prompt_whose_bucket_overflows_the_model_still_generates():
  """18 prompt tokens round up to a bucket of 32; 32 + 24 new tokens exceed max_len 48,
  but 18 + 24 fit: the sampler narrows the width to the room left (it used to refuse)."""
  model, params = make_model(2, max_len=48)
  prompts = random_prompts(np.random.default_rng(1), [18, 5])
  out = sampling.Sampler(model, eos_id=EOS, pad_id=PAD)(
      params, prompts, jax.random.PRNGKey(0), sampling.SamplingConfig(24, greedy=True))
  tokens, lengths = sampling.right_pad(prompts, PAD)
  want, _ = sampling.greedy_uncached(lambda p, t: model.apply({"params": p}, t), params, tokens,
                                     lengths, 24, EOS, PAD)
  np.testing.assert_array_equal(np.asarray(out.tokens), want)
  with pytest.raises(ValueError, match="exceeds model.max_len=48"):  # truly too long
    sampling.Sampler(model, eos_id=EOS, pad_id=PAD)(
        params, random_prompts(np.random.default_rng(1), [25]), jax.random.PRNGKey(0),
        sampling.SamplingConfig(24, greedy=True))
