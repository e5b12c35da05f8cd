"""Packed comparison batches: the same sequences, losses and gradients as padded ones."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dpo as dpo_config
from research.data import packing
from research.models import config as model_config
from research.models.decoder import Decoder
from research.models.heads import ScalarModel
from research.objectives import dpo, reward
from research.rlhf import reference
from research.stages import dpo as dpo_stage
from research.training import partitioning

L = 32


def uneven_batch(seed: int, pairs: int = 6, k: int = 2) -> dict:
  """`pairs` examples of K right-padded rows, prompt 2-12 and response 1-18 tokens,
  one empty slot when K > 2 (a ranking with fewer answers)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((pairs, k, L), np.int32)
  mask = np.zeros((pairs, k, L), bool)
  response = np.zeros((pairs, k, L), bool)
  ranks = np.tile(np.arange(k, dtype=np.int32), (pairs, 1))
  for b in range(pairs):
    prompt = [2, *rng.integers(4, 500, rng.integers(1, 12))]
    for j in range(k):
      if k > 2 and b == 0 and j == k - 1:
        ranks[b, j] = -1
        continue
      reply = list(rng.integers(4, 500, rng.integers(1, 19)))
      row = prompt + reply
      tokens[b, j, :len(row)], mask[b, j, :len(row)] = row, True
      response[b, j, len(prompt):len(row)] = True
  return {"tokens": tokens, "mask": mask, "response_mask": response, "ranks": ranks,
          "margin": np.zeros(pairs, np.float32),
          "ref_logps": rng.normal(-30, 5, (pairs, k)).astype(np.float32)}


def test_pack_keeps_every_sequence_in_its_own_segment():
  batch = uneven_batch(0, k=3)
  lengths = packing.sequence_lengths(batch)
  rows = packing.rows_needed(lengths, L)
  assert rows < lengths.size  # fewer rows than the padded B*K
  assert packing.pack(batch, rows - 1) is None
  packed = packing.pack(batch, rows)["packed"]
  assert "tokens" not in packing.pack(batch, rows) and "ranks" in packing.pack(batch, rows)
  flat_tokens = batch["tokens"].reshape(-1, L)
  flat_response = batch["response_mask"].reshape(-1, L)
  for i, n in enumerate(lengths):
    at = packed["sequence"] == i
    assert at.sum() == n
    if not n:
      continue
    r = np.flatnonzero(at.any(1))
    assert len(r) == 1  # one row, contiguous, one segment id, positions 0..n-1
    cols = np.flatnonzero(at[r[0]])
    np.testing.assert_array_equal(cols, np.arange(cols[0], cols[0] + n))
    np.testing.assert_array_equal(packed["tokens"][r[0], cols], flat_tokens[i, :n])
    np.testing.assert_array_equal(packed["response_mask"][r[0], cols], flat_response[i, :n])
    np.testing.assert_array_equal(packed["positions"][r[0], cols], np.arange(n))
    assert len(set(packed["segment_ids"][r[0], cols])) == 1 and packed["segment_ids"][r[0],
                                                                                     cols[0]] > 0
  assert (packed["segment_ids"][packed["sequence"] < 0] == 0).all()


def _tiny(scalar=False):
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  model = ScalarModel(cfg) if scalar else Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  return model, params


def _config(**objective):
  return ml_collections.ConfigDict({"objective": {"beta": 0.1, "label_smoothing": 0.0,
                                                  "nll_coef": 0.3, "margin": 0.0,
                                                  "center_coef": 0.01, **objective}})


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_packed_loss_and_gradients_equal_padded(stage):
  """DPO (with its NLL term) on pairs and the reward model's ranking loss on K = 3
  answers with an empty slot: packed into fewer rows, the same loss, metrics and
  gradients as the padded batch."""
  model, params = _tiny(scalar=stage == "reward")
  batch = uneven_batch(1, k=3 if stage == "reward" else 2)
  packed = packing.pack(batch, packing.rows_needed(packing.sequence_lengths(batch), L))
  fn = dpo.dpo_fn if stage == "dpo" else reward.loss_fn
  loss = jax.jit(jax.value_and_grad(
      lambda p, b: fn(p, b, None, model=model, config=_config()), has_aux=True))
  (want, want_metrics), want_grads = loss(params, batch)
  (got, got_metrics), got_grads = loss(params, packed)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for key in want_metrics:
    np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_online_reference_scores_packed_rows_as_padded(devices):
  model, params = _tiny()
  batch = uneven_batch(6)
  packed = packing.pack(batch, packing.rows_needed(packing.sequence_lengths(batch), L))
  mesh = partitioning.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices[:1])
  scorer = reference.ReferenceScorer(model, params, mesh, partitioning.DEFAULT_RULES)
  padded_batch = {k: v for k, v in batch.items() if k != "ref_logps"}
  want = next(reference.WithReference(iter([padded_batch]), scorer))["ref_logps"]
  got = next(reference.WithReference(iter([packed]), scorer))["ref_logps"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_packed_dpo_sharded_equals_one_device(devices):
  model, params = _tiny()
  batch = uneven_batch(2, pairs=8)
  rows = packing.rows_needed(packing.sequence_lengths(batch), L)
  packed = packing.pack(batch, -(-rows // 4) * 4)  # rows split over (data, fsdp)
  fn = jax.jit(lambda p, b: dpo.dpo_fn(p, b, None, model=model, config=_config())[0])
  one = fn(params, packed)
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  sharded_params = jax.device_put(params, partitioning.logical_shardings(boxed, mesh,
                                                                         rules)["params"])
  with partitioning.activate(mesh, rules):
    eight = fn(sharded_params, partitioning.shard_batch(packed, mesh, rules))
  np.testing.assert_allclose(eight, one, rtol=1e-5)


def test_auto_rows_and_fallback_to_padding():
  examples = [{k: v[i] for k, v in uneven_batch(3, pairs=40).items()} for i in range(40)]
  rows = packing.auto_rows(examples, 8, split=4, samples=16)
  assert rows % 4 == 0 and rows < 16
  it = packing.Packed(iter([uneven_batch(4), uneven_batch(5)]), rows=1)
  out = list(it)
  assert all("tokens" in b for b in out) and it.fallback_batches == 2  # 1 row never fits
  assert packing.report(it, 12)["fallback_batches"] == 2


def test_dpo_stage_trains_on_packed_batches(tiny_sft, tmp_path):
  config = dpo_config.get_config("tiny")
  config.init_from = tiny_sft
  config.mesh.num_devices = 1
  config.data.update(packing=True, seq_len=512)  # ~130-token pairs: 3 to a row
  config.train.update(steps=4, eval_every=4, checkpoint_every=4, eval_batches=2)
  config.optimizer.warmup_steps = 1
  config.evaluate.num_prompts = 0
  s = dpo_stage.run(config, str(tmp_path))
  d = s["data"]
  assert d["packing"] and d["rows"] < d["padded_rows"] and d["batches"] >= 4
  # The policy is the reference at the start (read from padded rows: float rounding).
  assert abs(s["eval_at_start"]["rewards/margins"]) < 1e-5
  assert np.isfinite(s["train"]["loss"])
  assert s["compilations"] == 1 + (d["fallback_batches"] > 0)
