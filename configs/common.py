"""Defaults of each component, in one place; stage configs compose and override them."""

from __future__ import annotations

import ml_collections

from research.models import config as model_config
from research.training import partitioning


def base(stage: str, run: dict) -> ml_collections.ConfigDict:
  """What every stage's config has; `run` is its size (`presets.run`)."""
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0                      # drives every rng: init, data order, sampling
  c.init_from = ""                # workdir of an earlier stage to start from
  c.imports = ""                  # modules to import first (they register objectives), a,b
  c.mesh = mesh()
  c.mesh.num_devices = run["devices"]
  c.sharding = ml_collections.ConfigDict({"rules": partitioning.DEFAULT_RULES})
  c.optimizer = optimizer()
  c.train = train()
  return c


def model(preset: str, **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"preset": preset, **model_config.preset(preset), **overrides})


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Sizes of the (data, fsdp, tensor) mesh axes; -1 takes the remaining devices.
  `num_devices` (-1: all) uses only the first N devices."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor,
                                    "num_devices": -1})


def optimizer(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "lr": 1e-3, "warmup_steps": 50, "min_lr_ratio": 0.1, "b1": 0.9, "b2": 0.95,
      "eps": 1e-8, "weight_decay": 0.1, "grad_clip_norm": 1.0, "grad_accum_steps": 1,
      **overrides})


def train(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "steps": 1000, "log_every": 10, "eval_every": 200, "eval_batches": 8,
      "checkpoint_every": 200, "max_to_keep": 2,
      # Parameters that stay as they start: comma-separated patterns over their paths
      # ("embedding,unembed/*", "layer_0/*"; fnmatch); with LoRA, on top of the base.
      "freeze": "",
      # A rerun into a trained workdir may change only resumable keys (research/runs.py);
      # True continues it under the new values and records them in config_history.jsonl.
      "allow_config_change": False, **overrides})


def data(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      # embedded | tfds:NAME | hf:ORG/NAME | a dataset dir | .txt .jsonl .json .parquet
      "source": "embedded",
      "corpus_seed": 0,              # the embedded corpus is a function of (seed, size)
      "corpus_size": 15_000,         # reviews; ~7 MB of text
      "text_field": "text",          # JSONL / TFDS field holding the document
      # Sources with splits (TFDS, a DatasetDict, a .json of splits): which one is which.
      "tfds_splits": ml_collections.ConfigDict({"train": "train", "validation": "test"}),
      "tfds_data_dir": "",
      "holdout_every": 20,           # local files: every 20th record is held out
      "seq_len": 256,
      # A prompt longer than this (0: than a training row or the generation room
      # allows) is cut from the left, keeping BOS (truncate_left), or dropped (drop);
      # every stage counts and reports both (research/data/prompt_fit.py).
      "max_prompt_len": 0,
      "prompt_overflow": "truncate_left",
      "batch_size": 16,              # global, over all hosts and devices
      "tokenizer_path": "",          # empty: upstream stage's, else trained here
      "tokenizer_train_docs": 20_000,
      "tokenizer_byte_fallback": False,
      **overrides})


def preference_data(**overrides) -> ml_collections.ConfigDict:
  """Preference records (and the prompts RL, best-of-n and evaluation draw from them)."""
  return data(**{
      # embedded | a .jsonl .json .parquet file | a dataset dir | hf:ORG/NAME | tfds:NAME
      "source": "embedded",
      "template": "alpaca",          # how prompts are rendered: alpaca | chat | hf_chat | none
      "prompt_format": "instruction",  # embedded: instruction | prefix
      "num_responses": 2,            # K responses per prompt (pairs: 2)
      "label_noise": 0.0,            # probability of flipping a training label
      "max_train_records": 0,        # > 0: only the first N training records (data scaling)
      # Record field <- the source's field (or '=literal'), for any source, e.g.
      # --config.data.field_map.prompt=question; "" leaves a field as it is.
      "field_map": field_map("prompt", "chosen", "rejected", "responses", "ranking", "margin",
                             "completion", "label"),  # the last two: KTO's unpaired layout
      "corpus_size": 2000,
      "batch_size": 8,
      # Padding-free batches for the reward and DPO stages: a batch's responses
      # packed end to end into packed_rows rows of seq_len tokens (0: the most a
      # sample of batches needs); research/data/packing.py.
      "packing": False,
      "packed_rows": 0,
      **overrides})


def reward(source: str = "model", model: str = "runs/reward",
           **overrides) -> ml_collections.ConfigDict:
  """Where RL, best-of-n and preference labelling get their scores
  (`research/rlhf/rewards.py`), and the reward functions' settings."""
  return ml_collections.ConfigDict({
      "source": source,         # model | ground_truth | functions | judge
      "model": model,           # source 'model': a reward-model workdir (normalised scores)
      # source 'judge': a language-model run asked "A or B?" (research/rlhf/judge.py); a
      # response scores its mean P(win) against the other samples of its prompt.
      "judge": "", "judge_question": "Which response is better?",
      # source 'functions': registered reward functions and their weights
      # (research/rewards/): math, exact, regex, format, code, remote, or your own
      # (config.imports), e.g. "math:1.0,format:0.1".
      "functions": "",
      "math_tolerance": 0.0,    # math: relative tolerance between numbers (0: exact)
      "regex": "",              # regex: the pattern the whole response must match
      "code_cpu_seconds": 2, "code_wall_seconds": 5.0, "code_memory_mb": 512,
      "code_test_seconds": 1,   # code: per assert test
      "code_all_pass": False,   # code: 1 only when every test passes (else the fraction)
      "code_workers": 0,        # code: responses checked at once (0: one per CPU)
      "remote_url": "", "remote_timeout": 30.0, "remote_retries": 3,  # remote
      **overrides})


def field_map(*fields: str) -> ml_collections.ConfigDict:
  """`config.data.field_map` with every record field a layout reads, unmapped ("")."""
  return ml_collections.ConfigDict({f: "" for f in fields})


def evaluate(run: dict, **overrides) -> ml_collections.ConfigDict:
  """How a policy is measured on held-out prompts, by every stage that reports one
  (the same keys everywhere; `research/evaluation.py`). `run`: a `presets.run`."""
  return ml_collections.ConfigDict({
      "num_prompts": run["eval_prompts"],    # held-out prompts; 0: no report
      "max_new_tokens": run["new_tokens"],
      "samples_per_prompt": run["eval_samples"],  # temperature-1 samples (the KL estimate)
      "reward_model": "",            # a reward-model workdir: also report its scores
      # The embedded movie-review scorer: auto (on the embedded data only; on a
      # researcher's data the reward model judges the win rate) | embedded_sentiment | none
      "ground_truth": "auto",
      "pretrain_batches": 0,         # held-out CLM loss of the policy (what PPO-ptx protects)
      # Tasks with checkable answers: reward functions that judge a response correct
      # (it scores 1), e.g. "math"; then pass@k, maj@k, lengths and entropy are
      # reported over pass_k_samples samples per prompt (research/verifiable.py).
      "checker": "",
      "pass_k_samples": 8,
      "best_of_n": 0,                # evaluate stage: > 1 scores best-of-n sampling instead
      "select_by": "reward_model",   # best-of-n: reward_model | ground_truth
      "sample_batch": 64,            # rows per sampler call
      **overrides})


def override(c: ml_collections.ConfigDict, dotted: dict) -> ml_collections.ConfigDict:
  """Sets `{'objective.clip_high': 0.28, ...}` on `c` as `--config.KEY=VALUE` would."""
  for key, value in dotted.items():
    *path, leaf = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[leaf] = value
  return c
