"""Preference data: prompts with K ranked responses (pairs are K = 2).

A record is {prompt, responses: [...], ranks: [...]} with rank 0 the best and
equal ranks ties. Sources (`config.data.source`):

  embedded         K reviews of the same film (same opening, same plot, different
                   latent ratings, `corpus.make_review(..., rating=r)`), ranked by
                   the ground-truth scorer: more positive is preferred.
  anything else    a file, dataset folder or TFDS name (`readers`) in any layout of
                   `layouts.preference`: pairs, TRL's explicit and implicit prompts
                   (strings or messages), rankings where ranking[k] is the rank of
                   responses[k] (0 = best, ties equal).

Prompt formats for the embedded set (`config.data.prompt_format`):
  instruction      "Write a review of <title>." -> the whole review
  prefix           the review's first 2-8 words -> the rest (the DPO paper's IMDb task)

`config.data.max_train_records` keeps the first N training records (a data-scaling
axis; held-out records are unchanged). `config.data.label_noise` flips training labels to model annotators who
disagree: a pair is swapped with that probability; a ranking gets one pass of
adjacent swaps, each with that probability. Held-out labels stay clean.
"""

from __future__ import annotations

import json
import random

import numpy as np

from research.data import corpus, layouts, readers, scorer
from research.errors import ConfigError


def ranks_from_scores(scores) -> list[int]:
  """Rank 0 for the highest score; equal scores share a rank."""
  order = sorted(set(scores), reverse=True)
  return [order.index(s) for s in scores]


def embedded_record(seed: int, index: int, k: int, prompt_format: str) -> dict:
  rng = random.Random(seed * 7_919 + index)
  ratings = rng.sample(range(1, 11), k)
  reviews = [corpus.make_review(seed, index, rating=r) for r in ratings]
  if prompt_format == "instruction":
    prompt = f"Write a review of {reviews[0].title}."
    responses = [r.text for r in reviews]
    judged = responses
  elif prompt_format == "prefix":
    n = 2 + index % 7
    words = reviews[0].text.split(" ")
    prompt = " ".join(words[:n])
    responses = [" " + " ".join(r.text.split(" ")[n:]) for r in reviews]
    judged = [prompt + resp for resp in responses]
  else:
    raise ConfigError(f"config.data.prompt_format={prompt_format!r}; expected 'instruction' "
                      f"or 'prefix'")
  scores = [scorer.score(t) for t in judged]
  return {"prompt": prompt, "responses": responses, "ranks": ranks_from_scores(scores),
          "scores": scores, "ratings": ratings, "index": index}


def embedded(data_cfg, split: str) -> list[dict]:
  k = data_cfg.num_responses
  return [embedded_record(data_cfg.corpus_seed, i, k, data_cfg.prompt_format)
          for i in range(data_cfg.corpus_size)
          if (i % corpus.VALIDATION_EVERY == 0) == (split == "validation")]


def add_label_noise(records: list[dict], rate: float, seed: int) -> list[dict]:
  """Annotator disagreement: swaps pair labels / adjacent ranks with probability `rate`."""
  if rate <= 0:
    return records
  rng = random.Random(seed)
  out = []
  for record in records:
    ranks = list(record["ranks"])
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])  # best first
    for pos in range(len(order) - 1):
      a, b = order[pos], order[pos + 1]
      if ranks[a] != ranks[b] and rng.random() < rate:
        ranks[a], ranks[b] = ranks[b], ranks[a]
        order[pos], order[pos + 1] = b, a
    out.append({**record, "ranks": ranks, "clean_ranks": list(record["ranks"])})
  return out


def preference_records(data_cfg, split: str, seed: int = 0) -> readers.Rows:
  """Records of `split`, each {prompt, responses, ranks} (`layouts.preference`);
  `.holdout` says how validation was cut from a source without that split."""
  spec = data_cfg.source
  holdout = None
  if spec == "embedded":
    records = embedded(data_cfg, split)
  else:
    rows = readers.rows(data_cfg, split, layouts.preference,
                        layout_of=layouts.preference_layout)
    records, holdout = [r for _, r in rows], rows.holdout
  if split == "train":
    limit = data_cfg.get("max_train_records", 0)
    if limit and limit < 0:
      raise ConfigError(f"config.data.max_train_records={limit}; expected 0 (all) or a count")
    records = add_label_noise(records[:limit] if limit else records, data_cfg.label_noise, seed)
  return readers.Rows(records, holdout)


def unpaired_records(data_cfg, split: str, seed: int = 0) -> readers.Rows:
  """Records of `split` as {prompt, completion, label, where} for KTO: an unpaired
  source (`layouts.unpaired`) as it is, with `label_noise` flipping training labels;
  pairs and rankings (the embedded set too) cut by `split_ranked` after their own
  label noise, so KTO sees the same labels a pair method would."""
  if data_cfg.source == "embedded":
    ranked = preference_records(data_cfg, split, seed)
    return readers.Rows(split_ranked(ranked), ranked.holdout)
  read = lambda record, where: (layouts.unpaired(record, where) if layouts.is_unpaired(record)
                                else layouts.preference(record, where))
  rows = readers.rows(data_cfg, split, read, layout_of=layouts.unpaired_layout)
  records = [r for _, r in rows]
  if records and "responses" in records[0]:
    if split == "train":
      records = add_label_noise(records, data_cfg.label_noise, seed)
    return readers.Rows(split_ranked(records), rows.holdout)
  if split == "train" and data_cfg.label_noise > 0:
    rng = random.Random(seed)
    records = [{**r, "label": r["label"] != (rng.random() < data_cfg.label_noise)}
               for r in records]
  return readers.Rows(records, rows.holdout)


def split_ranked(records: list[dict]) -> list[dict]:
  """Ranked responses -> unpaired examples: the better half of each ranking desirable,
  the worse half undesirable (a pair: chosen and rejected); a response tied with the
  median rank, or in a ranking of one distinct rank, is left out."""
  out = []
  for r in records:
    order = sorted(range(len(r["ranks"])), key=lambda i: r["ranks"][i])
    half = len(order) // 2
    best = {r["ranks"][i] for i in order[:half]}
    worst = {r["ranks"][i] for i in order[len(order) - half:]}
    for i, rank in enumerate(r["ranks"]):
      if (rank in best) != (rank in worst):
        out.append({"prompt": r["prompt"], "completion": r["responses"][i],
                    "label": rank in best, "where": r.get("where", "")})
  return out


def prompts(data_cfg, split: str) -> list:
  """The distinct prompts of the data, in a fixed order: what RL, best-of-n and
  evaluation sample from (strings, message lists, or {instruction, input})."""
  return [r["prompt"] for r in prompt_records(data_cfg, split)]


def prompt_records(data_cfg, split: str) -> list[dict]:
  """Each distinct prompt once, in the order of `distinct_prompts`, as its record:
  {prompt, where} and the reference fields a reward function reads (answer,
  solution, tests; `layouts.prompt_record`). Any preference, SFT or task layout
  gives them; of records sharing a prompt, the first is kept."""
  if data_cfg.source == "embedded":
    records = [{"prompt": r["prompt"], "where": f"embedded record {r['index']}"}
               for r in embedded(data_cfg, split)]
  else:
    rows = readers.rows(data_cfg, split, layouts.prompt_record, layout_of=layouts.prompt_layout)
    records = [r for _, r in rows]
  first = {}
  for r in records:
    first.setdefault(json.dumps(r["prompt"], sort_keys=True), r)
  return [first[k] for k in sorted(first)]


def distinct_prompts(records: list[dict]) -> list:
  """Each prompt once (strings or message lists), in a fixed order."""
  distinct = {json.dumps(r["prompt"], sort_keys=True): r["prompt"] for r in records}
  return [distinct[k] for k in sorted(distinct)]


def pairs(records: list[dict]) -> list[dict]:
  """Rankings expanded to (prompt, chosen, rejected) pairs, ties skipped (for DPO)."""
  out = []
  for r in records:
    ranks = r["ranks"]
    for i in range(len(ranks)):
      for j in range(len(ranks)):
        if ranks[i] < ranks[j]:
          out.append({"prompt": r["prompt"], "chosen": r["responses"][i],
                      "rejected": r["responses"][j], "where": r.get("where", "")})
  return out


def spearman(a, b) -> float:
  """Spearman rank correlation (average ranks for ties)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.spearmanr(np.asarray(a), np.asarray(b)).correlation)
