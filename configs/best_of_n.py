"""Best-of-n rejection-sampling fine-tuning (Llama 2 style), rounds from the SFT run.

  python -m research.main --config=configs/best_of_n.py --workdir=runs/best_of_n
  python -m research.main --config=configs/best_of_n.py --config.best_of_n.n=16
  python -m research.main --config=configs/best_of_n.py --config.reward.source=ground_truth
  python -m research.main --config=configs/best_of_n.py:tiny --config.init_from=runs/sft_tiny \
      --config.reward.model=runs/reward_tiny

`train.steps` is per round; each round starts from the previous one's checkpoint.
"""

import ml_collections

from configs import common, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a run size (`configs/presets.py`) or a model preset; the model must match
  the SFT run in `init_from`."""
  run = presets.run(arg)
  model_preset = run["model"]  # the model's shape; the run size is run["name"]
  c = common.base("best_of_n", run)
  c.init_from = presets.workdir("sft", run)
  c.model = common.model(model_preset)
  c.reward = common.reward("model", presets.workdir("reward", run))
  c.best_of_n = ml_collections.ConfigDict({
      "n": 8,                   # samples per prompt
      "rounds": run["best_of_n_rounds"],
      "prompts_per_round": run["best_of_n_prompts"],
      "temperature": 1.0,
      "max_new_tokens": run["new_tokens"],
      # Only finished responses become training targets (smoke models never stop).
      "require_eos": run["name"] != "smoke",
      # A prompt whose best response scores below this trains nothing (None: keep
      # the best whatever it scored). 0.5 on a 0/1 checker: RFT on correct answers.
      "min_score": ml_collections.FieldReference(None, field_type=float),
      "sample_batch": 64,       # rows per sampler call
  })
  # The SFT objective on the selected responses.
  c.objective = ml_collections.ConfigDict({"name": "clm", "z_loss": 0.0,
                                           "loss_normalization": "sequence"})
  c.data = common.preference_data(seq_len=256)  # prompts; seq_len/batch_size: fine-tuning
  c.train.update(eval_every=0, checkpoint_every=100, eval_batches=4)
  c.optimizer.update(lr=5e-5, warmup_steps=10, weight_decay=0.0)
  # Each round's policy on held-out prompts (the greedy report: configs/evaluate.py).
  c.evaluate = common.evaluate(run)
  if model_preset == "tiny":
    c.optimizer.update(lr=5e-4)
  presets.train_for(c, run["best_of_n"])
  return c
