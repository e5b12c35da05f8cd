"""Stage: a generative judge's agreement with known labels, and its position bias.

The held-out pairs of `config.data` (the embedded set's are labelled by the ground
truth) are shown to the judge run (`research/rlhf/judge.py`) in both orders; the
summary reports the accuracy of one order (alternating which response comes
first) and of both orders averaged, how often it answers "A", and how often the
two orders agree (Lee et al. 2023, "RLAIF", sec. 4.4).
"""

from __future__ import annotations

from research import runs
from research.rlhf import judge as judge_lib
from research.data import preferences
from research.errors import ConfigError
from research.training import partitioning


def run(config, workdir: str, hooks=(), reward=None) -> dict:
  del hooks, reward
  runs.check_is_run(config.judge, "config.judge", "name the language-model run to ask")
  runs.resolve(config)  # init_from's architecture, every value checked
  runs.save_config(config, workdir)
  pairs = preferences.pairs(preferences.preference_records(config.data, "validation"))
  if not pairs:
    raise ConfigError(f"config.data.source={config.data.source!r} has no held-out pairs with "
                      f"distinct labels")
  pairs = pairs[:config.num_pairs]
  mesh, rules = partitioning.mesh_and_rules(config)
  judge = judge_lib.GenerativeJudge.load(config.judge, question=config.question, mesh=mesh,
                                         rules=rules)
  summary = {"judge": config.judge, "question": config.question,
             "data": config.data.source, **judge_lib.agreement(judge, pairs)}
  runs.write_json(workdir, "summary.json", summary)
  return summary
