"""Continuous batching: many rows of uneven length decoded through a fixed set of slots.

A static batch decodes until its longest row ends, so when most responses end
early (RL on checkable answers: some stop after a line, some run to the limit)
most of its steps decode padding. Here the batch is `slots` rows of one KV
cache; when a row ends (EOS or its budget), its slot takes the next queued
row, prefilled on its own and written into that slot while the other rows keep
their caches (iteration-level scheduling, Yu et al. 2022, "Orca", sec. 3).
Samples of one prompt (RL groups) that start together share one prefill.

Each slot holds its row as the static sampler does: the left-aligned prompt in
cache slots [0, P), the token after it at slot P + count, so slots are in token
order. Rows started at different times are at different lengths, so every row
writes at its own index (`Decoder.decode` with one cache index per row). The
cache's capacity follows the longest live row up the static sampler's ladder
(P + 64, P + 128, ..., P + max_new_tokens) and back down once that row ends:
attention reads the part of the cache in use, as in the static sampler, instead
of P + max_new_tokens slots on every step.

The host drives the loop: a jitted decode chunk runs until `refill` rows have
ended (or every row), or a row needs more capacity; then the cache is resized
and the next prompts are prefilled into the freed slots. Compilations: the
chunk once per capacity, a resize per pair of capacities, the prefill once per
power-of-two count of prompts, and their placement per (capacity, prompts,
rows). Results come back in prompt order with the
static sampler's fields; greedy decoding gives the static sampler's tokens
(tests/test_continuous_batching.py). With no more rows than slots the static
sampler runs instead: one batch has nothing to refill.
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


def init_state(model: Decoder, slots: int, capacity: int, max_new: int) -> dict:
  """Every slot empty (done), a zeroed cache of `capacity` slots per row. Jit it
  (the mesh shards it)."""
  zeros = lambda shape, dt: _rows(jnp.zeros(shape, dt))
  return {"t": jnp.int32(0),
          "cache": _constrain_cache(init_cache(model.cfg, slots, capacity)),
          "kv_valid": zeros((slots, capacity), bool), "write": zeros((slots,), jnp.int32),
          "logits": zeros((slots, model.cfg.vocab_size), jnp.float32),
          "next_pos": zeros((slots,), jnp.int32), "count": zeros((slots,), jnp.int32),
          "limit": zeros((slots,), jnp.int32), "done": _rows(jnp.ones((slots,), bool)),
          "ended": zeros((slots,), bool),
          "tokens": zeros((slots, max_new), jnp.int32),
          "logprobs": zeros((slots, max_new), jnp.float32),
          "model_logprobs": zeros((slots, max_new), jnp.float32)}


def resize(state, capacity: int) -> dict:
  """The cache (and its valid mask) cut or zero-padded to `capacity` slots per
  row. The caller keeps every live row's data: its next write is below `capacity`."""
  def fit(x, axis):
    axis %= x.ndim
    now = x.shape[axis]
    if capacity <= now:
      return jax.lax.slice_in_dim(x, 0, capacity, axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, capacity - now)
    return jnp.pad(x, widths)
  s = dict(state)
  s["cache"] = _constrain_cache(_each_layer(
      lambda c: {"k": fit(c["k"], -1), "v": fit(c["v"], -2)}, state["cache"]))
  s["kv_valid"] = _rows(fit(state["kv_valid"], -1))
  return s


def _last_logits(model, params, tokens, positions, kv_valid, cache, index):
  def fn(m, *args):
    hidden, new_cache = m.decode(*args)
    return m.logits(hidden[:, -1:])[:, 0], new_cache
  return model.apply({"params": params}, tokens, positions, kv_valid, cache, index, method=fn)


def prefill(params, prompts_RxP, lengths_R, *, model: Decoder) -> dict:
  """R left-aligned prompts through the model: their cache (P slots), valid
  slots, and the logits of each one's next token."""
  r, p = prompts_RxP.shape
  slots_P = jnp.arange(p, dtype=jnp.int32)
  pad_R = p - lengths_R
  valid_RxP = slots_P[None] >= pad_R[:, None]
  pos_RxP = jnp.maximum(slots_P[None] - pad_R[:, None], 0)
  cache = _constrain_cache(init_cache(model.cfg, r, p))
  logits_RxV, cache = _last_logits(model, params, prompts_RxP, pos_RxP, valid_RxP, cache, 0)
  return {"cache": cache, "valid": valid_RxP, "logits": logits_RxV}


def place(state, new: dict, source_R, lengths_R, limits_R, slots_R, *, pad_id: int) -> dict:
  """Puts prefilled rows (`prefill`) in slots `slots_R` (an index >= the slot
  count drops that row: filler): slot `slots_R[i]` gets prefilled row
  `source_R[i]` (samples of one prompt share its prefill), its prompt in cache
  slots [0, P), the rest of the row cleared."""
  r, p = source_R.shape[0], new["valid"].shape[1]
  capacity = state["kv_valid"].shape[1]
  new = {"cache": _each_layer(lambda c: {"k": jnp.take(c["k"], source_R, axis=-4),
                                         "v": jnp.take(c["v"], source_R, axis=-4)},
                              new["cache"]),
         "valid": new["valid"][source_R], "logits": new["logits"][source_R]}

  def widen(x, axis):  # P slots -> the cache's capacity
    widths = [(0, 0)] * x.ndim
    widths[axis % x.ndim] = (0, capacity - p)
    return jnp.pad(x, widths)

  def set_rows(big, small, axis=0):  # rows `slots_R` of `big` along its batch axis
    index = (slice(None),) * (axis % big.ndim) + (slots_R,)
    return big.at[index].set(small.astype(big.dtype), mode="drop")

  def layer(big, small):
    b = -4  # batch axis of k (B,K,E,S) and v (B,K,S,E), after any layers axis
    return {"k": set_rows(big["k"], widen(small["k"], -1), b),
            "v": set_rows(big["v"], widen(small["v"], -2), b)}

  n = state["tokens"].shape[1]
  s = dict(state)
  s["cache"] = _constrain_cache(_each_layer(layer, state["cache"], new["cache"]))
  s["kv_valid"] = set_rows(state["kv_valid"], widen(new["valid"], -1))
  s["logits"] = set_rows(state["logits"], new["logits"])
  s["next_pos"] = set_rows(state["next_pos"], lengths_R)
  s["write"] = set_rows(state["write"], jnp.full((r,), p, jnp.int32))
  s["limit"] = set_rows(state["limit"], limits_R)
  for name, value in (("count", 0), ("done", False), ("ended", False)):
    s[name] = set_rows(state[name], jnp.full((r,), value, state[name].dtype))
  for name, value in (("tokens", pad_id), ("logprobs", 0.0), ("model_logprobs", 0.0)):
    s[name] = set_rows(state[name], jnp.full((r, n), value, state[name].dtype))
  return s


def decode_chunk(params, state, rng, refill, patience, *, model: Decoder,
                 cfg: sampling.SamplingConfig, eos_id, pad_id: int):
  """Decodes every live slot until `refill` of them have ended, or the first to
  end has waited `patience` steps for company, or all have ended, or a live row's
  next write would not fit the cache (the host then grows it).

  Step t draws each live row's next token from its last logits (the key is rng
  folded with t), records it at the row's own count, and runs it through the
  model at the row's own cache slot. Ended rows run too, at a slot inside the
  cache, and nothing of theirs is kept."""
  capacity = state["kv_valid"].shape[1]
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
    write_B = jnp.minimum(s["write"], capacity - 1)
    s["kv_valid"] = s["kv_valid"].at[rows_B, write_B].set(True)
    logits, s["cache"] = _last_logits(model, params, token_B[:, None], s["next_pos"][:, None],
                                      s["kv_valid"], s["cache"], write_B)
    s["logits"] = logits.astype(jnp.float32)
    s["next_pos"] = s["next_pos"] + 1
    s["write"] = s["write"] + alive_B.astype(jnp.int32)
    s["t"] = s["t"] + 1
    waited = waited + (ended_here > 0).astype(jnp.int32)
    return s, ended_here + jnp.sum(alive_B & s["done"]), waited

  def cond(carry):
    s, ended_here, waited = carry
    room = jnp.all(s["done"] | (s["write"] < capacity))
    return (ended_here < refill) & (waited < patience) & ~jnp.all(s["done"]) & room

  return jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.int32(0)))[0]


def _pow2_at_least(k: int) -> int:
  return 1 << max(k - 1, 0).bit_length()


class ContinuousSampler:
  """`sampling.Sampler`'s call, decoded through `slots` rows refilled as rows end.

  The decode chunk returns to the host (to prefill the next prompts into the
  freed slots) once `refill` rows have ended (0: an eighth of the slots), or
  once the first of them has waited `patience` steps. Smaller values leave
  fewer slots idle, at the price of more (smaller) prefills and host round
  trips: an insert costs about as much as a decode step or two. `segment`: the
  cache grows and shrinks in steps of this many slots (the static sampler's).
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
    self.mesh, self.rules = self.static.mesh, self.static.rules
    self.bucket, self.segment = bucket, segment
    self.split = partitioning.batch_axis_size(self.mesh, self.rules)
    if slots < 1:
      raise ValueError(f"slots must be >= 1, got {slots}")
    self.slots = -(-slots // self.split) * self.split
    self.refill = refill or max(self.slots // 8, 1)
    self.patience = max(int(patience), 1)
    self._init = jax.jit(functools.partial(init_state, model), static_argnums=(0, 1, 2))
    # Not donated: the cache changes shape, so its buffers could not be reused.
    self._resize = jax.jit(resize, static_argnums=(1,))
    self._prefill = jax.jit(functools.partial(prefill, model=model))
    self._place = jax.jit(functools.partial(place, pad_id=pad_id), donate_argnums=(0,))
    self._chunks: dict[sampling.SamplingConfig, Callable] = {}
    self.capacities: list[int] = []  # the last call's cache capacities, in order
    self.steps = 0  # the last call's decode steps
    self.prefilled_rows = 0  # the last call's prompt rows prefilled (fillers included)

  def _chunk(self, cfg):
    if cfg not in self._chunks:
      self._chunks[cfg] = jax.jit(functools.partial(
          decode_chunk, model=self.model, cfg=cfg, eos_id=self.eos_id, pad_id=self.pad_id),
          donate_argnums=(1,))
    return self._chunks[cfg]

  def compilations(self) -> int:
    fns = [self._init, self._resize, self._prefill, self._place, *self._chunks.values()]
    own = sum(fn._cache_size() for fn in fns)  # pylint: disable=protected-access
    return own + self.static.compilations()

  def _rows_per_insert(self, k: int) -> int:
    """Rows of an insert of k prompts: a power of two, split evenly over the mesh."""
    r = _pow2_at_least(k)
    return min(-(-r // self.split) * self.split, max(self.slots, k))

  def _capacity(self, prompt_width: int, max_new: int, next_write: int) -> int:
    """The smallest capacity on the ladder P + segment, P + 2 segment, ...,
    P + max_new that has room for a write at slot `next_write`."""
    for end in sampling.segment_ends(max_new, self.segment):
      if prompt_width + end > next_write:
        return prompt_width + end
    raise AssertionError(f"write at {next_write} beyond {prompt_width} + {max_new}")

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
    limits_N = (np.full(rows, cfg.max_new_tokens, np.int32) if max_new_per_row is None else
                sampling.row_limits(max_new_per_row, rows, cfg))
    with partitioning.activate(self.mesh, self.rules):
      out = self._run(params, prompts_NxP, lengths_N, g, limits_N, rng, cfg)
    mask = np.arange(cfg.max_new_tokens)[None] < out["count"][:, None]
    return sampling.SampleOutput(
        prompts=np.repeat(prompts_NxP, g, 0), prompt_lengths=np.repeat(lengths_N, g),
        tokens=out["tokens"], mask=mask,
        lengths=out["count"], logprobs=out["logprobs"], model_logprobs=out["model_logprobs"],
        ended=out["ended"])

  def _run(self, params, prompts_NxP, lengths_N, g, limits_N, rng, cfg) -> dict:
    """Rows i*g .. i*g+g-1 are samples of prompt i (`limits_N`: one per row)."""
    rows, p = len(limits_N), prompts_NxP.shape[1]
    b, n = self.slots, cfg.max_new_tokens
    capacity = self._capacity(p, n, p)
    state = self._init(b, capacity, n)
    self.capacities, self.prefilled_rows = [capacity], 0
    chunk = self._chunk(cfg)
    fields = ("tokens", "logprobs", "model_logprobs", "count", "ended")
    out = {"tokens": np.full((rows, n), self.pad_id, np.int32),
           "logprobs": np.zeros((rows, n), np.float32),
           "model_logprobs": np.zeros((rows, n), np.float32),
           "count": np.zeros(rows, np.int32), "ended": np.zeros(rows, bool)}
    holder = np.full(b, -1)  # the row each slot decodes (-1: free)
    write = np.zeros(b, np.int64)  # each live slot's next cache write (P + its count)
    queued = 0
    while True:
      free = np.flatnonzero(holder < 0)
      k = min(len(free), rows - queued)
      if not k and (holder < 0).all():
        return out
      # The cache follows the longest live row (a new row writes at P next).
      need = self._capacity(p, n, max([p] * bool(k) + write[holder >= 0].tolist()))
      if need != capacity:
        state, capacity = self._resize(state, need), need
        self.capacities.append(capacity)
      if k:
        r = self._rows_per_insert(k)
        take = np.arange(queued, queued + k)
        pick = np.concatenate([take, np.full(r - k, take[0])])
        slots = np.concatenate([free[:k], np.full(r - k, b)]).astype(np.int32)  # b: dropped
        # One prefill per prompt, however many of its samples start now.
        prompt_ids, source = np.unique(pick // g, return_inverse=True)
        u = self._rows_per_insert(len(prompt_ids))
        prompt_ids = np.concatenate([prompt_ids, np.full(u - len(prompt_ids), prompt_ids[0])])
        new = self._prefill(params, prompts_NxP[prompt_ids], lengths_N[prompt_ids])
        self.prefilled_rows += u
        state = self._place(state, new, source.astype(np.int32), lengths_N[pick // g],
                            limits_N[pick], slots)
        holder[free[:k]], write[free[:k]] = take, p
        queued += k
      # With nothing left to queue, run until every row has ended.
      refill, patience = ((min(self.refill, rows - queued), self.patience) if queued < rows
                          else (b + 1, cfg.max_new_tokens + 1))
      state = chunk(params, state, rng, np.int32(refill), np.int32(patience))
      got = jax.device_get({name: state[name] for name in fields + ("done", "write", "t")})
      write[:], self.steps = got["write"], int(got["t"])
      for slot in np.flatnonzero(got["done"] & (holder >= 0)):
        for name in fields:
          out[name][holder[slot]] = got[name][slot]
        holder[slot] = -1


def sampler(model: Decoder, *, eos_id, pad_id: int, mesh, rules, slots: int = 0):
  """The static sampler (slots 0: every row of a call in one batch) or this one."""
  if slots:
    return ContinuousSampler(model, eos_id=eos_id, pad_id=pad_id, slots=slots, mesh=mesh,
                             rules=rules)
  return sampling.Sampler(model, eos_id=eos_id, pad_id=pad_id, mesh=mesh, rules=rules)
