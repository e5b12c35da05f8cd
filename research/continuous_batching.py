"""Continuous batching: many rows of uneven length decoded through a fixed set of slots.

A static batch decodes until its longest row ends, so when most responses end
early (RL on checkable answers: some stop after a line, some run to the limit)
most of its steps decode padding. Here the batch is `slots` rows of one KV
cache; when a row ends (EOS or its budget), its slot takes the next queued
prompt, prefilled on its own and written into that slot while the other rows
keep their caches (iteration-level scheduling, Yu et al. 2022, "Orca", sec. 3).

The cache is a ring of W = prompt width + max_new_tokens slots written at one
shared index: step t writes slot t mod W of every row (an in-place update, as in
the static sampler). A row placed before step t holds its left-aligned prompt in
the P slots before t mod W and its at most max_new_tokens tokens after, so it
never overwrites itself. Slots are then not in token order, so attention masks
by each slot's token position (`Decoder.decode(kv_positions_BxS=...)`).

The host drives the loop: a jitted decode chunk runs until `refill` rows have
ended (or every row), then a jitted insert prefills the next prompts into the
freed slots (a few compilations: one per power-of-two count of rows inserted).
Results come back in prompt order with the static sampler's fields; greedy
decoding gives the static sampler's tokens (tests/test_continuous_batching.py).
With no more rows than slots the static sampler runs instead: one batch has
nothing to refill, and its cache grows with the decoded length.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.models.decoder import Decoder, cache_axes, init_cache
from research.training import partitioning

_ROWS = ("act_batch", None)


def _rows(x):
  """A batch-leading state array, sharded like the activations' batch."""
  return flax.linen.with_logical_constraint(x, _ROWS[:1] + (None,) * (x.ndim - 1))


def _constrain_cache(cache):
  one = lambda c: {k: flax.linen.with_logical_constraint(c[k], axes)
                   for k, axes in cache_axes(c).items()}
  return one(cache) if isinstance(cache, dict) else tuple(map(one, cache))


def _each_layer(fn, *caches):
  if isinstance(caches[0], dict):
    return fn(*caches)
  return tuple(fn(*c) for c in zip(*caches))


def init_state(model: Decoder, slots: int, width: int, max_new: int) -> dict:
  """Every slot empty (done), the ring cache zeroed. Jit it (the mesh shards it)."""
  w = width + max_new
  zeros = lambda shape, dt: _rows(jnp.zeros(shape, dt))
  return {"t": jnp.int32(0),
          "cache": _constrain_cache(init_cache(model.cfg, slots, w)),
          "kv_valid": zeros((slots, w), bool), "kv_pos": zeros((slots, w), jnp.int32),
          "logits": zeros((slots, model.cfg.vocab_size), jnp.float32),
          "next_pos": zeros((slots,), jnp.int32), "count": zeros((slots,), jnp.int32),
          "limit": zeros((slots,), jnp.int32), "done": _rows(jnp.ones((slots,), bool)),
          "ended": zeros((slots,), bool),
          "tokens": zeros((slots, max_new), jnp.int32),
          "logprobs": zeros((slots, max_new), jnp.float32),
          "model_logprobs": zeros((slots, max_new), jnp.float32)}


def _last_logits(model, params, tokens, positions, kv_valid, cache, index, kv_pos=None):
  def fn(m, *args):
    hidden, new_cache = m.decode(*args)
    return m.logits(hidden[:, -1:])[:, 0], new_cache
  return model.apply({"params": params}, tokens, positions, kv_valid, cache, index, kv_pos,
                     method=fn)


def insert(params, state, prompts_RxP, lengths_R, limits_R, slots_R, *, model: Decoder,
           pad_id: int):
  """Prefills R left-aligned prompts and puts them in slots `slots_R` (an index
  >= the slot count drops that row: filler). Their prompts fill the P ring slots
  before the next write, t mod W, so their first token goes there."""
  r, p = prompts_RxP.shape
  w = state["kv_valid"].shape[1]
  pad_R = p - lengths_R
  slots_P = jnp.arange(p, dtype=jnp.int32)
  valid_RxP = slots_P[None] >= pad_R[:, None]
  pos_RxP = jnp.maximum(slots_P[None] - pad_R[:, None], 0)
  cache = _constrain_cache(init_cache(model.cfg, r, p))
  logits_RxV, cache = _last_logits(model, params, prompts_RxP, pos_RxP, valid_RxP, cache, 0)
  shift = (state["t"] - p) % w

  def place(x, axis):  # P slots -> W ring slots ending just before t mod W
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, w - p)
    return jnp.roll(jnp.pad(x, widths), shift, axis=axis)

  def set_rows(big, small, axis=0):  # rows `slots_R` of `big` along its batch axis
    index = (slice(None),) * (axis % big.ndim) + (slots_R,)
    return big.at[index].set(small.astype(big.dtype), mode="drop")

  def layer(big, new):
    b = -4  # batch axis of k (B,K,E,S) and v (B,K,S,E), after any layers axis
    return {"k": set_rows(big["k"], place(new["k"], -1), b),
            "v": set_rows(big["v"], place(new["v"], -2), b)}

  n = state["tokens"].shape[1]
  s = dict(state)
  s["cache"] = _constrain_cache(_each_layer(layer, state["cache"], cache))
  s["kv_valid"] = set_rows(state["kv_valid"], place(valid_RxP, -1))
  s["kv_pos"] = set_rows(state["kv_pos"], place(pos_RxP, -1))
  s["logits"] = set_rows(state["logits"], logits_RxV)
  s["next_pos"] = set_rows(state["next_pos"], lengths_R)
  s["limit"] = set_rows(state["limit"], limits_R)
  for name, value in (("count", 0), ("done", False), ("ended", False)):
    s[name] = set_rows(state[name], jnp.full((r,), value, state[name].dtype))
  for name, value in (("tokens", pad_id), ("logprobs", 0.0), ("model_logprobs", 0.0)):
    s[name] = set_rows(state[name], jnp.full((r, n), value, state[name].dtype))
  return s


def decode_chunk(params, state, rng, refill, patience, *, model: Decoder,
                 cfg: sampling.SamplingConfig, eos_id, pad_id: int):
  """Decodes every live slot until `refill` of them have ended, or the first to
  end has waited `patience` steps for company, or all have ended.

  Step t draws each live row's next token from its last logits (the key is
  rng folded with t), records it at the row's own count, and runs it through
  the model at ring slot t mod W."""
  w = state["kv_valid"].shape[1]
  b, n = state["tokens"].shape
  rows_B = jnp.arange(b)

  def body(carry):
    s, ended_here, waited = carry
    token_B, lp_B, model_lp_B = sampling._choose(  # pylint: disable=protected-access
        s["logits"], jax.random.fold_in(rng, s["t"]), cfg)
    alive_B = ~s["done"]
    token_B = jnp.where(alive_B, token_B, pad_id)
    col_B = jnp.where(alive_B, s["count"], n)  # out of range: dropped
    s = dict(s)
    for name, value in (("tokens", token_B), ("logprobs", lp_B), ("model_logprobs", model_lp_B)):
      s[name] = s[name].at[rows_B, col_B].set(value, mode="drop")
    stop_B = alive_B & sampling.is_stop(token_B, eos_id)
    s["count"] = s["count"] + alive_B.astype(jnp.int32)
    s["ended"] = s["ended"] | stop_B
    s["done"] = s["done"] | stop_B | (s["count"] >= s["limit"])
    slot = s["t"] % w
    s["kv_valid"] = s["kv_valid"].at[:, slot].set(True)
    s["kv_pos"] = s["kv_pos"].at[:, slot].set(s["next_pos"])
    logits, s["cache"] = _last_logits(model, params, token_B[:, None], s["next_pos"][:, None],
                                      s["kv_valid"], s["cache"], slot, s["kv_pos"])
    s["logits"] = logits.astype(jnp.float32)
    s["next_pos"] = s["next_pos"] + 1
    s["t"] = s["t"] + 1
    waited = waited + (ended_here > 0).astype(jnp.int32)
    return s, ended_here + jnp.sum(alive_B & s["done"]), waited

  cond = lambda carry: ((carry[1] < refill) & (carry[2] < patience)
                        & ~jnp.all(carry[0]["done"]))
  return jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.int32(0)))[0]


def _pow2_at_least(k: int) -> int:
  return 1 << max(k - 1, 0).bit_length()


class ContinuousSampler:
  """`sampling.Sampler`'s call, decoded through `slots` rows refilled as rows end.

  The decode chunk returns to the host (to prefill the next prompts into the
  freed slots) once `refill` rows have ended (0: an eighth of the slots), or
  once the first of them has waited `patience` steps. Smaller values leave
  fewer slots idle, at the price of more (smaller) prefills and host round
  trips: an insert costs about as much as a decode step or two.
  """

  def __init__(self, model: Decoder, *, eos_id, slots: int, pad_id: int = 0, refill: int = 0,
               patience: int = 4, mesh=None, rules=None, bucket: int = sampling.BUCKET,
               segment: int = sampling.SEGMENT):
    if jax.process_count() > 1:
      raise ValueError("continuous batching (rollout.slots > 0) runs in one process; "
                       "set rollout.slots=0 for multi-process runs")
    self.static = sampling.Sampler(model, eos_id=eos_id, pad_id=pad_id, mesh=mesh, rules=rules,
                                   bucket=bucket, segment=segment)
    self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
    self.mesh, self.rules, self.bucket = self.static.mesh, self.static.rules, bucket
    self.split = partitioning.batch_axis_size(self.mesh, self.rules)
    if slots < 1:
      raise ValueError(f"slots must be >= 1, got {slots}")
    self.slots = -(-slots // self.split) * self.split
    self.refill = refill or max(self.slots // 8, 1)
    self.patience = max(int(patience), 1)
    self._init = jax.jit(functools.partial(init_state, model), static_argnums=(0, 1, 2))
    self._insert = jax.jit(functools.partial(insert, model=model, pad_id=pad_id),
                           donate_argnums=(1,))
    self._chunks: dict[sampling.SamplingConfig, Callable] = {}

  def _chunk(self, cfg):
    if cfg not in self._chunks:
      self._chunks[cfg] = jax.jit(functools.partial(
          decode_chunk, model=self.model, cfg=cfg, eos_id=self.eos_id, pad_id=self.pad_id),
          donate_argnums=(1,))
    return self._chunks[cfg]

  def compilations(self) -> int:
    fns = [self._init, self._insert, *self._chunks.values()]
    own = sum(fn._cache_size() for fn in fns)  # pylint: disable=protected-access
    return own + self.static.compilations()

  def _rows_per_insert(self, k: int) -> int:
    """Rows of an insert of k prompts: a power of two, split evenly over the mesh."""
    r = _pow2_at_least(k)
    return min(-(-r // self.split) * self.split, max(self.slots, k))

  def __call__(self, params, prompts, rng, cfg: sampling.SamplingConfig, *, lengths=None,
               padding: str = "right", prompt_width: int = 0, samples_per_prompt: int = 1,
               max_new_per_row=None) -> sampling.SampleOutput:
    prompts_NxP, lengths_N, g = self.static.prepare(
        prompts, cfg, lengths=lengths, padding=padding, prompt_width=prompt_width,
        samples_per_prompt=samples_per_prompt)
    rows = len(lengths_N) * g
    if rows <= self.slots:
      return self.static(params, prompts, rng, cfg, lengths=lengths, padding=padding,
                         prompt_width=prompt_width, samples_per_prompt=samples_per_prompt,
                         max_new_per_row=max_new_per_row)
    prompts_NxP, lengths_N = np.repeat(prompts_NxP, g, 0), np.repeat(lengths_N, g)
    limits_N = (np.full(rows, cfg.max_new_tokens, np.int32) if max_new_per_row is None else
                sampling.row_limits(max_new_per_row, rows, cfg))
    with partitioning.activate(self.mesh, self.rules):
      out = self._run(params, prompts_NxP, lengths_N, limits_N, rng, cfg)
    mask = np.arange(cfg.max_new_tokens)[None] < out["count"][:, None]
    return sampling.SampleOutput(
        prompts=prompts_NxP, prompt_lengths=lengths_N, tokens=out["tokens"], mask=mask,
        lengths=out["count"], logprobs=out["logprobs"], model_logprobs=out["model_logprobs"],
        ended=out["ended"])

  def _run(self, params, prompts_NxP, lengths_N, limits_N, rng, cfg) -> dict:
    rows, p = prompts_NxP.shape
    b, n = self.slots, cfg.max_new_tokens
    state = self._init(b, p, n)
    chunk = self._chunk(cfg)
    fields = ("tokens", "logprobs", "model_logprobs", "count", "ended")
    out = {"tokens": np.full((rows, n), self.pad_id, np.int32),
           "logprobs": np.zeros((rows, n), np.float32),
           "model_logprobs": np.zeros((rows, n), np.float32),
           "count": np.zeros(rows, np.int32), "ended": np.zeros(rows, bool)}
    holder = np.full(b, -1)  # the row each slot decodes (-1: free)
    queued = 0
    while True:
      free = np.flatnonzero(holder < 0)
      if queued < rows and len(free):
        k = min(len(free), rows - queued)
        r = self._rows_per_insert(k)
        take = np.arange(queued, queued + k)
        pick = np.concatenate([take, np.full(r - k, take[0])])
        slots = np.concatenate([free[:k], np.full(r - k, b)]).astype(np.int32)  # b: dropped
        state = self._insert(params, state, prompts_NxP[pick], lengths_N[pick],
                             limits_N[pick], slots)
        holder[free[:k]] = take
        queued += k
      if (holder < 0).all():
        return out
      # With nothing left to queue, run until every row has ended.
      refill, patience = ((min(self.refill, rows - queued), self.patience) if queued < rows
                          else (b + 1, cfg.max_new_tokens + 1))
      state = chunk(params, state, rng, np.int32(refill), np.int32(patience))
      got = jax.device_get({k: state[k] for k in fields + ("done",)})
      for slot in np.flatnonzero(got["done"] & (holder >= 0)):
        for k in fields:
          out[k][holder[slot]] = got[k][slot]
        holder[slot] = -1


def sampler(model: Decoder, *, eos_id, pad_id: int, mesh, rules, slots: int = 0):
  """The static sampler (slots 0: every row of a call in one batch) or this one."""
  if slots:
    return ContinuousSampler(model, eos_id=eos_id, pad_id=pad_id, slots=slots, mesh=mesh,
                             rules=rules)
  return sampling.Sampler(model, eos_id=eos_id, pad_id=pad_id, mesh=mesh, rules=rules)
