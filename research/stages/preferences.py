"""Stage: a preference set sampled from a policy and labelled by a reward.

The DPO paper's controlled-sentiment setup (Rafailov et al. 2023, sec. 6.1):
`preferences.k` samples per prompt from the SFT model, ranked by the
ground-truth scorer (or a reward model), all K(K-1)/2 pairs usable. Writes

  preferences.jsonl  {prompt, responses, ranking}: for `configs/reward.py` and
                     `configs/dpo.py` with `--config.data.source=<this file>`;
  preferred.jsonl    {instruction, input, output} of each prompt's best response:
                     "Preferred-FT" (SFT on the chosen responses).

`preferences.prompt_offset` starts at another training prompt (each round of an
iterated run labels new prompts); `preferences.accumulate` names an earlier
preferences run whose records this run's file starts with (the union so far).
"""

from __future__ import annotations

import json
import os

import jax

from research import runs, sampling, seeds
from research.data import preferences, prompt_fit
from research.errors import ConfigError
from research.rlhf import best_of_n, rewards
from research.training import partitioning


def _earlier_records(run: str) -> list[str]:
  """The lines of an earlier preferences run's file (iterated online RLHF: each
  round's file holds every round's comparisons so far)."""
  if not run:
    return []
  path = os.path.join(run, "preferences.jsonl")
  if not os.path.exists(path):
    raise ConfigError(f"config.preferences.accumulate={run!r} has no preferences.jsonl: name a "
                      f"finished preferences run")
  with open(path, encoding="utf-8") as f:
    return [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  del hooks
  if not config.init_from:
    raise ConfigError("config.init_from must name the policy to sample from (the SFT run)")
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  p = config.preferences
  offset = p.get("prompt_offset", 0)
  earlier = _earlier_records(p.get("accumulate", ""))
  mesh, rules = partitioning.mesh_and_rules(config)
  tok = runs.tokenizer_for(config, workdir, lambda: ())
  model, params = runs.load_policy(config.init_from, mesh, rules)
  source = rewards.as_source(reward) if reward is not None else \
      rewards.from_config(config, mesh, rules)
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  fitted, records = prompt_fit.fit_records(
      preferences.prompt_records(config.data, "train")[offset:offset + p.num_prompts],
      config.data, tok,
      max_len=model.cfg.max_len, max_new_tokens=p.max_new_tokens, bucket=sampler.bucket,
      reward=source)
  prompt_stats = prompt_fit.announce(fitted, "prompts")
  prompts, ids = fitted.texts, fitted.ids
  texts, scores, ended, lengths = best_of_n.sample_and_score(
      sampler, params, prompts, ids, tok, source, n=p.k,
      cfg=sampling.SamplingConfig(p.max_new_tokens, temperature=p.temperature),
      rng=jax.random.PRNGKey(seeds.derived_seed(config.seed, "preferences")),
      chunk=p.sample_batch, records=records)
  kept = 0
  with open(os.path.join(workdir, "preferences.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(earlier)
    for prompt, responses, row, done in zip(prompts, texts, scores, ended):
      if p.require_eos and not done.all():
        continue  # a truncated response would teach the policy to stop mid-review
      f.write(json.dumps({"prompt": prompt, "responses": responses,
                          "ranking": preferences.ranks_from_scores(row.tolist())}) + "\n")
      kept += 1
  records, stats = best_of_n.best_records(prompts, texts, scores, ended, p.require_eos)
  with open(os.path.join(workdir, "preferred.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  summary = {"prompts": len(prompts), "prompt_offset": offset,
             "accumulated": {"from": p.get("accumulate", ""), "records": len(earlier)}, "prompt_fit": prompt_stats, "k": p.k, "kept_prompts": kept,
             "mean_score": float(scores.mean()), "best_score": stats["best/score"],
             "ended": float(ended.mean()), "mean_length": float(lengths.mean())}
  runs.write_json(workdir, "summary.json", summary)
  return summary
