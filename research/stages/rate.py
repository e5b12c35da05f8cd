"""Stage: Elo ratings between policy runs (Bai et al. 2022, sec. 4.5 and Fig. 1).

Every run samples `rate.samples_per_prompt` responses (temperature 1) to the same
held-out prompts; every pair of runs plays one game per prompt and sample,
judged by the ground truth, a reward model (higher score wins, ties within
`rate.tie_tolerance`) or a generative judge (its position-debiased P(a > b) is
the result, a fraction). The Bradley-Terry maximum-likelihood strengths on the
Elo scale, with 95% intervals from resampling prompts (`research/ratings.py`),
are written to summary.json, ratings.md and ratings.png.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from research import ratings, runs, sampling, seeds
from research.data import preferences, prompt_fit
from research.errors import ConfigError
from research.rlhf.rewards import ground_truth
from research.rlhf.rollout import rollout
from research.training import partitioning

JUDGES = ("ground_truth", "reward_model", "generative")
LANGUAGE_MODELS = ("clm", "sft", "dpo", "rlhf", "best_of_n")


def run_list(config) -> tuple[list[str], list[str]]:
  """(workdirs, names) of `config.runs` / `config.names`, checked."""
  paths = [p.strip() for p in config.runs.split(",") if p.strip()]
  if len(paths) < 2:
    raise ConfigError(f"config.runs={config.runs!r}: name at least two runs to rate, "
                      f"comma-separated")
  for path in paths:
    runs.check_is_run(path, "config.runs", "rate language-model runs")
    stage = runs.load_config(path).get("stage", "")
    if stage not in LANGUAGE_MODELS:
      raise ConfigError(f"config.runs: {path!r} is a {stage or 'unknown'} run; rate "
                        f"language-model runs ({', '.join(LANGUAGE_MODELS)})")
  names = [n.strip() for n in config.names.split(",")] if config.names else \
      [os.path.basename(os.path.normpath(p)) for p in paths]
  if len(names) != len(paths) or len(set(names)) != len(names):
    raise ConfigError(f"config.names={config.names!r}: one distinct name per run "
                      f"({len(paths)} runs: {paths})")
  return paths, names


def _samples(path: str, prompts: list, config, mesh, rules):
  """(texts [P*S], rollouts) of one run; the prompts must all fit its model."""
  r = config.rate
  model, params = runs.load_policy(path, mesh, rules)
  tok = runs.load_tokenizer(runs.tokenizer_path(path))
  sampler = sampling.Sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id, mesh=mesh, rules=rules)
  fitted = prompt_fit.for_generation(prompts, config.data, tok, max_len=model.cfg.max_len,
                                     max_new_tokens=r.max_new_tokens, bucket=sampler.bucket,
                                     what=f"held-out prompts for {path}")
  if len(fitted.ids) != len(prompts):
    raise ConfigError(f"{path}: {len(prompts) - len(fitted.ids)} of the {len(prompts)} prompts do "
                      f"not fit its model; every run must answer the same prompts (lower "
                      f"config.rate.max_new_tokens or config.rate.num_prompts)")
  roll = rollout(sampler, params, fitted.ids, tok,
                 jax.random.PRNGKey(seeds.derived_seed(config.seed, "rate")),
                 sampling.SamplingConfig(r.max_new_tokens, temperature=r.temperature),
                 samples_per_prompt=r.samples_per_prompt)
  return roll.texts, roll, tok


def _scorer(config, mesh, rules):
  """texts, rollouts, tokenizer -> scores, for the score judges; None for the generative."""
  r = config.rate
  if r.judge == "ground_truth":
    s = r.samples_per_prompt
    return lambda prompts, texts, roll, tok: np.asarray(
        [ground_truth(prompts[i // s], t, config.data.prompt_format) for i, t in enumerate(texts)])
  if r.judge == "reward_model":
    from research.reward_fn import RewardFunction  # pylint: disable=g-import-not-at-top
    runs.check_reward_run(r.reward_model, "config.rate.reward_model")
    rm = RewardFunction.load(r.reward_model, mesh, rules)
    rm_tok = runs.load_tokenizer(runs.tokenizer_path(r.reward_model))
    probe = "A probe: the film's 2 leads, an  odd\tspacing and émigré names."

    def score(prompts, texts, roll, tok):
      del prompts, texts
      if tok.encode(probe) != rm_tok.encode(probe):
        raise ConfigError(f"config.rate.reward_model={r.reward_model!r} reads another tokenizer "
                          f"than the runs it judges; rate with the ground truth or a judge")
      return np.asarray(rm(roll.tokens, roll.mask))
    return score
  if r.judge == "generative":
    return None
  raise ConfigError(f"config.rate.judge={r.judge!r}; expected one of {JUDGES}")


def play(names, texts: dict, prompts: list, samples: int, *, scores: dict | None = None,
         judge=None, tie_tolerance: float = 0.0) -> list[ratings.Game]:
  """Every pair of runs, one game per prompt and sample (group: the prompt)."""
  games, pending = [], []
  for a in range(len(names)):
    for b in range(a + 1, len(names)):
      for row in range(len(prompts) * samples):
        p = row // samples
        if scores is not None:
          result = ratings.outcome(scores[names[a]][row], scores[names[b]][row], tie_tolerance)
          games.append(ratings.Game(a, b, result, group=p))
        else:
          pending.append((a, b, p, texts[names[a]][row], texts[names[b]][row]))
  if pending:
    won = judge.prefer([prompts[p] for _, _, p, _, _ in pending], [x[3] for x in pending],
                       [x[4] for x in pending])
    games += [ratings.Game(a, b, float(w), group=p) for (a, b, p, _, _), w in zip(pending, won)]
  return games


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  del hooks, reward
  r = config.rate
  paths, names = run_list(config)
  if r.judge == "generative" and not r.judge_run:
    raise ConfigError("config.rate.judge='generative' needs config.rate.judge_run (a "
                      "language-model run)")
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  mesh, rules = partitioning.mesh_and_rules(config)
  prompts = preferences.prompts(config.data, "validation")[:r.num_prompts]
  score = _scorer(config, mesh, rules)
  texts, scores = {}, {} if score is not None else None
  for name, path in zip(names, paths):
    texts[name], roll, tok = _samples(path, prompts, config, mesh, rules)
    if score is not None:
      scores[name] = score(prompts, texts[name], roll, tok)
  judge = None
  if score is None:
    from research.rlhf.judge import GenerativeJudge  # pylint: disable=g-import-not-at-top
    judge = GenerativeJudge.load(r.judge_run, question=r.judge_question, mesh=mesh, rules=rules)
  games = play(names, texts, prompts, r.samples_per_prompt, scores=scores, judge=judge,
               tie_tolerance=r.tie_tolerance)
  table = ratings.rate(games, names, l2=r.l2, samples=r.bootstrap, seed=config.seed)
  matrix = ratings.win_matrix(games, len(names))
  summary = {"runs": dict(zip(names, paths)), "judge": r.judge,
             "judged_by": {"ground_truth": "the embedded scorer",
                           "reward_model": r.reward_model,
                           "generative": r.judge_run}[r.judge],
             "prompts": len(prompts), "samples_per_prompt": r.samples_per_prompt,
             "games": len(games), "ratings": table,
             "win_matrix": {a: {b: (None if np.isnan(matrix[i, j]) else float(matrix[i, j]))
                                for j, b in enumerate(names)} for i, a in enumerate(names)}}
  if scores is not None:
    summary["mean_score"] = {n: float(np.mean(s)) for n, s in scores.items()}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "ratings.md"), "w", encoding="utf-8") as f:
      f.write(f"Judge: {r.judge} ({summary['judged_by']}); {len(prompts)} prompts x "
              f"{r.samples_per_prompt} samples, {len(games)} games\n\n")
      f.write(ratings.table(table) + "\n")
    plot(table, os.path.join(workdir, "ratings.png"), f"Elo ({r.judge}), 95% bootstrap intervals")
  runs.write_json(workdir, "summary.json", summary)
  return summary


def plot(table: list[dict], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = table[::-1]  # best on top
  fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(rows) + 1.4))
  y = np.arange(len(rows))
  elo = np.array([row["elo"] for row in rows])
  err = np.array([[row["elo"] - row["lo"] for row in rows], [row["hi"] - row["elo"] for row in rows]])
  ax.errorbar(elo, y, xerr=err, fmt="o", capsize=4)
  ax.set_yticks(y, [row["name"] for row in rows])
  ax.set_xlabel("Elo (Bradley-Terry maximum likelihood; mean 1000)")
  ax.grid(axis="x", alpha=0.3)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)
