"""Continuous batching: the same tokens as the static sampler, rows in prompt order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import continuous_batching, sampling
from research.training import partitioning
from tests.test_sampling import PAD, make_model, random_prompts

LENGTHS = [3, 11, 1, 6, 9, 2, 14, 5, 7, 4, 12]  # 11 prompts, two prompt buckets' worth


def _eos_from_static(model, params, prompts, n):
  """A token greedy decoding emits early in some rows, so rows end unevenly."""
  free = sampling.Sampler(model, eos_id=-1, pad_id=PAD)(
      params, prompts, jax.random.PRNGKey(0), sampling.SamplingConfig(n, greedy=True))
  return int(np.asarray(free.tokens)[0, 2])


def _assert_same(static, continuous, logprob_atol=1e-4):
  for name in ("prompts", "prompt_lengths", "tokens", "mask", "lengths", "ended"):
    np.testing.assert_array_equal(np.asarray(getattr(continuous, name)),
                                  np.asarray(getattr(static, name)), err_msg=name)
  for name in ("logprobs", "model_logprobs"):
    np.testing.assert_allclose(np.asarray(getattr(continuous, name)),
                               np.asarray(getattr(static, name)), atol=logprob_atol,
                               err_msg=name)


def test_greedy_equals_static_sampler():
  """11 prompts through 4 slots: rows end at EOS or at per-row budgets, slots are
  refilled one and several at a time, and the ring wraps; every row's tokens,
  lengths, EOS flags and log-probs equal the static sampler's. Scanned layers
  with sliding-window ones (masked by position in the ring); the other tests run
  unrolled layers. The cache grows and shrinks in segments of 4 slots."""
  model, params = make_model(11, scan_layers=True, sliding_window=6, attention_pattern="lg")
  prompts = random_prompts(np.random.default_rng(11), LENGTHS)
  n = 13
  eos = _eos_from_static(model, params, prompts, n)
  budgets = np.asarray([13, 2, 13, 5, 13, 1, 13, 13, 8, 13, 3])
  cfg = sampling.SamplingConfig(n, greedy=True)
  static = sampling.Sampler(model, eos_id=eos, pad_id=PAD)(
      params, prompts, jax.random.PRNGKey(0), cfg, max_new_per_row=budgets)
  assert len(set(np.asarray(static.lengths).tolist())) > 3  # uneven rows
  assert 0 < np.asarray(static.ended).sum() < len(prompts)
  sampler = continuous_batching.ContinuousSampler(model, eos_id=eos, pad_id=PAD, slots=4,
                                                  refill=2, segment=4)
  out = sampler(params, prompts, jax.random.PRNGKey(0), cfg, max_new_per_row=budgets)
  _assert_same(static, out)  # log-probs: prefills of other row counts round differently
  steps = np.diff(sampler.capacities)
  assert (steps > 0).any() and (steps < 0).any(), sampler.capacities  # grew and shrank
  # Other rows compile what their capacities and insert sizes need (bounded: the
  # chunk per capacity, a placement per capacity and insert size, a resize per
  # pair of capacities); the first call's shapes again compile nothing.
  sampler(params, prompts[::-1], jax.random.PRNGKey(1), cfg, max_new_per_row=budgets[::-1])
  before = sampler.compilations()
  sampler(params, prompts, jax.random.PRNGKey(2), cfg, max_new_per_row=budgets)
  assert sampler.compilations() == before


def test_groups_and_sampled_draws_come_back_in_prompt_order():
  """G samples per prompt: rows i*G .. i*G+G-1 answer prompt i; sampled tokens'
  log-probs are the model's (rescored by a full forward pass), and a row's mask
  covers exactly its tokens up to EOS."""
  model, params = make_model(12)
  prompts = random_prompts(np.random.default_rng(12), [4, 9, 2])
  cfg = sampling.SamplingConfig(9, temperature=1.0)
  sampler = continuous_batching.ContinuousSampler(model, eos_id=5, pad_id=PAD, slots=2)
  out = sampler(params, prompts, jax.random.PRNGKey(3), cfg, samples_per_prompt=3)
  assert out.tokens.shape == (9, 9)
  # Samples of one prompt inserted together share a prefill: the first insert
  # fills both slots from prompt 0 with one prefilled row.
  assert sampler.prefilled_rows < 9
  np.testing.assert_array_equal(out.prompt_lengths, np.repeat([4, 9, 2], 3))
  for row in range(9):
    prompt = prompts[row // 3]
    length = int(out.lengths[row])
    response = out.tokens[row, :length]
    assert out.mask[row].sum() == length and (out.tokens[row, length:] == PAD).all()
    assert bool(out.ended[row]) == (length and response[-1] == 5)
    logits = np.asarray(model.apply({"params": params},
                                    jnp.asarray([prompt + list(response)]))[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                               keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    want = logp[np.arange(len(prompt) - 1, len(prompt) - 1 + length), response]
    np.testing.assert_allclose(out.model_logprobs[row, :length], want, atol=1e-4)
    np.testing.assert_allclose(out.logprobs[row, :length], want, atol=1e-4)  # temperature 1


def test_greedy_groups_share_prefills_and_equal_static_sampler():
  """4 samples of each of 3 prompts through 4 slots, greedy: every row equals the
  static sampler's, and each prompt was prefilled once per insert, not per row."""
  model, params = make_model(16)
  prompts = random_prompts(np.random.default_rng(16), [5, 2, 8])
  cfg = sampling.SamplingConfig(6, greedy=True)
  static = sampling.Sampler(model, eos_id=-1, pad_id=PAD)(
      params, prompts, jax.random.PRNGKey(0), cfg, samples_per_prompt=4)
  sampler = continuous_batching.ContinuousSampler(model, eos_id=-1, pad_id=PAD, slots=4)
  out = sampler(params, prompts, jax.random.PRNGKey(0), cfg, samples_per_prompt=4)
  _assert_same(static, out)
  assert sampler.prefilled_rows == 3  # one row per prompt: its 4 samples start together


def test_no_more_rows_than_slots_runs_the_static_sampler():
  model, params = make_model(13)
  prompts = random_prompts(np.random.default_rng(13), [3, 5])
  cfg = sampling.SamplingConfig(6, greedy=True)
  sampler = continuous_batching.ContinuousSampler(model, eos_id=-1, pad_id=PAD, slots=4)
  out = sampler(params, prompts, jax.random.PRNGKey(0), cfg, samples_per_prompt=2)
  static = sampler.static(params, prompts, jax.random.PRNGKey(0), cfg, samples_per_prompt=2)
  _assert_same(static, out, logprob_atol=0)
  assert not sampler._chunks  # pylint: disable=protected-access


def test_sharded_slots_match_one_device(devices):
  model, params = make_model(14)
  prompts = random_prompts(np.random.default_rng(14), LENGTHS[:9])
  n = 8
  eos = _eos_from_static(model, params, prompts, n)
  cfg = sampling.SamplingConfig(n, greedy=True)
  single = continuous_batching.ContinuousSampler(model, eos_id=eos, pad_id=PAD, slots=4,
                                                 segment=4)(
      params, prompts, jax.random.PRNGKey(0), cfg)
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  shardings = partitioning.logical_shardings(boxed, mesh, rules)["params"]
  sampler = continuous_batching.ContinuousSampler(model, eos_id=eos, pad_id=PAD, slots=4,
                                                  segment=4, mesh=mesh, rules=rules)
  sharded = sampler(jax.device_put(params, shardings), prompts, jax.random.PRNGKey(0), cfg)
  _assert_same(single, sharded)


def test_bad_budgets_are_named():
  model, params = make_model(15)
  sampler = continuous_batching.ContinuousSampler(model, eos_id=-1, slots=1)
  with pytest.raises(ValueError, match="max_new_per_row"):
    sampler(params, [[2, 3], [2]], jax.random.PRNGKey(0), sampling.SamplingConfig(4),
            max_new_per_row=[4, 5])
