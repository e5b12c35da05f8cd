"""DPO and variants on preference pairs, starting from (and regularised to) the SFT run.

  python -m research.main --config=configs/dpo.py --workdir=runs/dpo          # from runs/sft
  python -m research.main --config=configs/dpo.py --config.objective.name=ipo
  python -m research.main --config=configs/dpo.py --config.objective.beta=0.5
  python -m research.main --config=configs/dpo.py:tiny --config.init_from=runs/sft_tiny

Objectives (research/objectives/dpo.py): dpo, cdpo (label_smoothing), ipo, slic,
simpo (simpo_gamma), orpo (orpo_lambda); any adds nll_coef * NLL(chosen). kto
(configs/kto.py) reads unpaired {prompt, completion, label} records, or pairs cut
into halves.
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset; the model must match
  the SFT run in `init_from`."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("dpo", run)
  c.init_from = presets.workdir("sft", run)
  c.model = common.model(model_preset)
  c.objective = ml_collections.ConfigDict({
      "name": "dpo",
      "beta": 0.1,
      "label_smoothing": 0.0,   # cdpo
      "simpo_gamma": 0.5,       # simpo target margin
      "orpo_lambda": 0.1,       # orpo odds-ratio weight
      "desirable_weight": 1.0,  # kto lambda_D
      "undesirable_weight": 1.0,  # kto lambda_U (KTO sec. 4.2: lambda_D n_D / lambda_U n_U
                                  # in [1, 4/3])
      "nll_coef": 0.0,          # + nll_coef * NLL(chosen) for any objective
      "reference": "online",    # online | precompute (cached in the workdir)
  })
  c.data = common.preference_data(num_responses=4, seq_len=256)
  c.train.update(eval_every=100, checkpoint_every=100, eval_batches=8)
  c.optimizer.update(lr=1e-5, warmup_steps=20, weight_decay=0.0)
  c.evaluate = common.evaluate(run)  # after training, against the SFT model
  if model_preset == "tiny":
    c.data.update(corpus_size=1000, seq_len=256, batch_size=8)
    c.train.update(eval_every=50, checkpoint_every=150, eval_batches=4)
    c.optimizer.update(lr=1e-4, warmup_steps=10)
  presets.train_for(c, run["dpo"])
  return c
