"""Reward model: a scalar head on the SFT trunk, fitted to preference rankings.

  python -m research.main --config=configs/reward.py --workdir=runs/reward   # from runs/sft
  python -m research.main --config=configs/reward.py:tiny --config.init_from=runs/sft_tiny
  python -m research.main --config=configs/reward.py --config.data.label_noise=0.3
  python -m research.main --config=configs/reward.py --config.data.source=prefs.jsonl \
      --config.data.num_responses=2
  # preference-model pretraining: a reward run continued (trunk and head) on other data
  python -m research.main --config=configs/reward.py --config.init_from=runs/pmp \
      --config.init_head=True --config.data.source=human.jsonl --workdir=runs/reward_ft
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset; the model must match
  the SFT run in `init_from`."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("reward", run)
  c.init_from = presets.workdir("sft", run)
  # False: init_from is a language-model run (SFT, CLM); its trunk, a fresh head.
  # True: init_from is a reward run, continued trunk and head on this run's data:
  # preference-model pretraining (Askell et al. 2021, sec. 4; Bai et al. 2022).
  c.init_head = False
  c.model = common.model(model_preset)
  c.objective = ml_collections.ConfigDict({
      "name": "reward",
      "margin": 0.0,          # constant margin in -log sigmoid(r_w - r_l - margin)
      "center_coef": 0.01,    # reward centring, c * (sum_k r_k)^2 per prompt
  })
  c.data = common.preference_data(num_responses=4, corpus_size=4000, seq_len=256)
  c.train.update(eval_every=100, checkpoint_every=100)
  c.optimizer.update(lr=1e-4, warmup_steps=20, weight_decay=0.0)
  if model_preset == "tiny":
    c.data.update(corpus_size=2000, seq_len=256, batch_size=8)
    c.train.update(eval_batches=6)
    c.optimizer.update(lr=1e-3, warmup_steps=20)
  presets.train_for(c, run["reward"])
  return c
