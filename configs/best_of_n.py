"""Best-of-n rejection-sampling fine-tuning (Llama 2 style), rounds from the SFT run.

  python -m research.main --config=configs/best_of_n.py --workdir=runs/best_of_n
  python -m research.main --config=configs/best_of_n.py --config.best_of_n.n=16
  python -m research.main --config=configs/best_of_n.py --config.reward.source=ground_truth
  python -m research.main --config=configs/best_of_n.py:tiny --config.init_from=runs/sft_tiny \
      --config.reward.model=runs/reward_tiny

`train.steps` is per round; each round starts from the previous one's checkpoint.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` is the model preset; it must match the SFT run in `init_from`."""
  preset = arg or "small"
  c = common.base("best_of_n")
  c.init_from = "runs/sft"
  c.model = common.model(preset)
  c.reward = ml_collections.ConfigDict({"source": "model", "model": "runs/reward"})
  c.best_of_n = ml_collections.ConfigDict({
      "n": 8,                   # samples per prompt
      "rounds": 2,
      "prompts_per_round": 256,
      "temperature": 1.0,
      "max_new_tokens": 192,
      "require_eos": True,      # only finished responses become training targets
      "sample_batch": 64,       # rows per sampler call
  })
  # The SFT objective on the selected responses.
  c.objective = ml_collections.ConfigDict({"name": "clm", "z_loss": 0.0,
                                           "loss_normalization": "sequence"})
  c.data = common.preference_data(seq_len=256)  # prompts; seq_len/batch_size: fine-tuning
  c.train.update(steps=100, eval_every=0, checkpoint_every=100, eval_batches=4)
  c.optimizer.update(lr=5e-5, warmup_steps=10, weight_decay=0.0)
  c.evaluate = ml_collections.ConfigDict({
      "num_prompts": 64, "max_new_tokens": 192, "samples_per_prompt": 1,
      "report": True,           # greedy ground truth and win rate of the final policy
  })
  if preset == "tiny":
    c.init_from = "runs/sft_tiny"
    c.reward.model = "runs/reward_tiny"
    c.best_of_n.update(prompts_per_round=128, max_new_tokens=200)
    c.train.update(steps=60, checkpoint_every=60)
    c.optimizer.update(lr=5e-4)
    c.evaluate.update(num_prompts=32, max_new_tokens=200)
  return c
