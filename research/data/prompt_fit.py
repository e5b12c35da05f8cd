"""One policy for prompts too long for a stage, everywhere a prompt is tokenised:
training rows (SFT, reward model, DPO) and generation (RL rollouts, best-of-n,
the preferences stage, every evaluation).

  config.data.max_prompt_len   the most tokens of a prompt (0: no cap of its own;
                               TRL's `max_prompt_length`)
  config.data.prompt_overflow  'truncate_left': keep the first token (BOS) and the
                               last ones, the end of the conversation where the
                               question is (TRL's default); 'drop': leave the
                               example out. Either way the count is reported.

Training rows must also fit `config.data.seq_len` with their responses; a
generated prompt must leave `max_new_tokens` of room in `model.max_len`, its
width rounded up to the sampler's bucket.
"""

from __future__ import annotations

import dataclasses

from research.data import summary as summary_lib, templates
from research.errors import ConfigError, DataError

OVERFLOW = ("truncate_left", "drop")


def settings(data_cfg) -> tuple[int, str]:
  """(max_prompt_len, prompt_overflow) of a data config (older configs: no cap, truncate)."""
  cap = data_cfg.get("max_prompt_len", 0) or 0
  overflow = data_cfg.get("prompt_overflow", "truncate_left")
  if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
    raise ConfigError(f"config.data.max_prompt_len={cap!r} must be an integer >= 0 (0: no cap)")
  if overflow not in OVERFLOW:
    raise ConfigError(f"config.data.prompt_overflow={overflow!r}; expected one of {OVERFLOW}")
  return cap, overflow


def fit(ids: list[int], limit: int, overflow: str) -> tuple[list[int] | None, str]:
  """`ids` within `limit` tokens -> (ids, 'ok' | 'truncated') or (None, 'dropped')."""
  if len(ids) <= limit:
    return ids, "ok"
  if overflow == "drop" or limit < 1:
    return None, "dropped"
  return ids[:1] + ids[len(ids) - (limit - 1):] if limit > 1 else ids[:1], "truncated"


def generation_room(max_len: int, max_new_tokens: int, bucket: int, cap: int = 0) -> int:
  """The most prompt tokens a sampler with this bucket can take before
  `max_new_tokens` new ones within `max_len` (and within `cap` if > 0)."""
  room = (max_len - max_new_tokens) // bucket * bucket
  if room < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                      f"model.max_len={max_len} (prompts are rounded up to {bucket} tokens)")
  return min(room, cap) if cap else room


@dataclasses.dataclass
class Prompts:
  """Prompts ready to sample from: the kept ones, their token ids, their indices
  in the prompts given (to keep records aligned), and the counts."""
  texts: list
  ids: list[list[int]]
  counts: summary_lib.Counts
  index: list[int] = dataclasses.field(default_factory=list)


def for_generation(prompts, data_cfg, tok, *, max_len: int, max_new_tokens: int,
                   bucket: int, what: str = "prompts") -> Prompts:
  """Renders (`config.data.template`), tokenises and fits every prompt for sampling
  `max_new_tokens` tokens; `what` names the set in an error."""
  cap, overflow = settings(data_cfg)
  limit = generation_room(max_len, max_new_tokens, bucket, cap)
  counts = summary_lib.Counts(limit=limit, overflow=overflow)
  texts, ids, index = [], [], []
  for i, prompt in enumerate(prompts):
    fitted, status = fit(templates.prompt_ids(prompt, data_cfg.template, tok), limit, overflow)
    counts.add(status, f"{what} {i}", "prompt_too_long")
    if fitted is not None:
      texts.append(prompt)
      ids.append(fitted)
      index.append(i)
      counts.tokens += len(fitted)
  if prompts and not ids:
    raise DataError(f"every one of the {len(prompts)} {what} is longer than {limit} tokens "
                    f"and config.data.prompt_overflow='drop'; raise model.max_len or "
                    f"config.data.max_prompt_len, lower max_new_tokens, or truncate "
                    f"(prompt_overflow='truncate_left')")
  return Prompts(texts, ids, counts, index)


def fit_records(records: list[dict], data_cfg, tok, *, max_len: int, max_new_tokens: int,
                bucket: int, what: str = "prompts", reward=None) -> tuple[Prompts, list[dict]]:
  """`for_generation` over prompt records (`preferences.prompt_records`) -> (the
  fitted prompts, the kept records aligned with them); a `reward` that reads record
  fields (reward functions) checks them here, before any sampling."""
  fitted = for_generation([r["prompt"] for r in records], data_cfg, tok, max_len=max_len,
                          max_new_tokens=max_new_tokens, bucket=bucket, what=what)
  kept = [records[i] for i in fitted.index]
  if hasattr(reward, "check_records"):
    reward.check_records(kept, what)
  return fitted, kept


def announce(prompts: Prompts, label: str) -> dict:
  """Prints the `data: ...` line of a prompt set (`summary.describe`); its counts."""
  stats = prompts.counts.as_dict()
  summary_lib.announce([summary_lib.describe(label, stats)])
  return stats
