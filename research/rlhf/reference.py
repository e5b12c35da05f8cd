"""The frozen reference model's log-probs, computed outside the train step.

Quantities from frozen models travel in the batch (the loss then depends on
the policy's params and the batch only). Two ways to get them there:

  precompute  every example once, up front, cached in the workdir (best when
              the run makes several passes over the data);
  online      each batch just before its step (best when the run sees each
              example about once); `WithReference` wraps the data iterator and
              keeps its checkpointable state.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from research.models import logprobs
from research.training import partitioning

CACHE_FILE = "reference_logps.npz"


class ReferenceScorer:
  """Summed response log-probs under fixed params; one jitted forward, reused."""

  def __init__(self, model, params, mesh, rules):
    self.model, self.params, self.mesh, self.rules = model, params, mesh, rules
    self._packed_fns = {}
    self._fn = jax.jit(lambda p, t, m, r: logprobs.response_logprob_sums(model, p, t, m, r)[0],
                       out_shardings=partitioning.data_sharding(mesh, rules, 1))

  def __call__(self, tokens_NxL, mask_NxL, response_mask_NxL) -> np.ndarray:
    """This process's rows in, their scores out (with several processes, each
    passes its own rows, and the scores of its own come back)."""
    padded, n = partitioning.pad_rows({"tokens": tokens_NxL, "mask": mask_NxL,
                                       "response_mask": response_mask_NxL}, self.mesh, self.rules)
    batch = partitioning.shard_batch(padded, self.mesh, self.rules)
    with partitioning.activate(self.mesh, self.rules):
      scores = self._fn(self.params, batch["tokens"], batch["mask"], batch["response_mask"])
    return partitioning.local_rows(scores, self.mesh, self.rules)[:n]

  def pairs(self, batch: dict) -> np.ndarray:
    """BxK for a batch whose tokens are BxKxL, or packed (`research/data/packing.py`)."""
    if "packed" in batch:
      return self._packed(batch)
    b, k, l = batch["tokens"].shape
    flat = lambda x: np.asarray(x).reshape(b * k, l)
    return self(flat(batch["tokens"]), flat(batch["mask"]),
                flat(batch["response_mask"])).reshape(b, k)


  def _packed(self, batch: dict) -> np.ndarray:
    """The packed rows' sequence sums: one forward over R rows, not B*K padded ones."""
    b, k = np.shape(batch["ranks"])
    n = b * k * jax.process_count()  # sequence ids are global (packing.Packed's offset)
    if n not in self._packed_fns:
      self._packed_fns[n] = jax.jit(
          lambda p, rows: logprobs.packed_response_sums(self.model, p, rows, n)[0])
    rows = partitioning.shard_batch(batch["packed"], self.mesh, self.rules)
    with partitioning.activate(self.mesh, self.rules):
      sums = np.asarray(jax.device_get(self._packed_fns[n](self.params, rows)))
    mine = jax.process_index() * b * k
    return sums[mine:mine + b * k].reshape(b, k)


def precompute(examples: list[dict], scorer: ReferenceScorer, batch_size: int,
               cache_dir: str | None = None, name: str = "train") -> list[dict]:
  """Adds `ref_logps` to every example; reuses `cache_dir/CACHE_FILE` if it matches."""
  path = os.path.join(cache_dir, f"{name}_{CACHE_FILE}") if cache_dir else None
  if path and os.path.exists(path):
    cached = np.load(path)["ref_logps"]
    if len(cached) == len(examples):
      return [{**e, "ref_logps": r} for e, r in zip(examples, cached)]
  out = []
  for i in range(0, len(examples), batch_size):
    chunk = examples[i:i + batch_size]
    stacked = {k: np.stack([e[k] for e in chunk]) for k in ("tokens", "mask", "response_mask")}
    out.append(scorer.pairs(stacked))
  ref = np.concatenate(out).astype(np.float32)
  if path and jax.process_index() == 0:
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, ref_logps=ref)
    os.replace(tmp, path)
  return [{**e, "ref_logps": r} for e, r in zip(examples, ref)]


class WithReference:
  """A batch iterator whose batches gain `ref_logps` just before use."""

  def __init__(self, iterator, scorer: ReferenceScorer | None):
    self._it, self._scorer = iterator, scorer

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self._it))
    b, k = np.shape(batch["ranks"]) if "packed" in batch else batch["tokens"].shape[:2]
    batch["ref_logps"] = (np.zeros((b, k), np.float32) if self._scorer is None
                          else self._scorer.pairs(batch).astype(np.float32))
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state) -> None:
    self._it.set_state(state)
