"""A run's workdir, read and written: config.json, the tokenizer, trained parameters.

Below every stage: later stages, the reward function, the sampling and convert
CLIs and experiments open earlier runs through this module alone. Where a run
keeps its language model is recorded by the run itself (`policy.json`), so no
reader needs to know which stage wrote it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import flax.linen as nn
import jax
import ml_collections

from research import validate
from research.data import hf_tokenizer, tokenizer as tokenizer_lib
from research.errors import DataError
from research.models import config as model_config
from research.models.decoder import Decoder
from research.training import checkpoint, partitioning, state as state_lib

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
POLICY_FILE = "policy.json"


# --- config.json -----------------------------------------------------------------

def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with (its `config.json`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a run?")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


# Stages that read `init_from` through `load_policy` (any run's language model);
# the others restore its checkpoint's parameters as a plain decoder.
POLICY_READERS = ("evaluate", "preferences", "rlhf")


def check_init_from(config) -> None:
  """`config.init_from` must hold what this stage starts from: a language model
  (not a reward model), stored as a plain decoder unless the stage reads runs
  through `load_policy`. Raises ConfigError naming the source run's stage."""
  source = config.get("init_from")
  if not source or not os.path.exists(os.path.join(source, CONFIG_FILE)):
    return
  upstream = load_config(source).get("stage", "")
  where = policy_location(source)
  key = f"config.init_from={source!r}"
  if config.stage == "reward" and config.get("init_head"):
    if upstream != "reward":
      raise validate.ConfigError(f"config.init_head=True continues a reward model's trunk and "
                                 f"head, but {key} is a {upstream or 'unknown'} run; name a "
                                 f"reward run, or set config.init_head=False")
    return
  if upstream == "reward" and config.stage == "reward":
    raise validate.ConfigError(f"{key} is a reward-model run: set config.init_head=True to "
                               f"continue its trunk and head on this data (preference-model "
                               f"pretraining), or start from a language-model run")
  if upstream == "reward":
    raise validate.ConfigError(f"{key} is a reward-model run (a scalar head on the decoder); "
                               f"stage {config.stage!r} starts from a language-model run "
                               f"(clm, sft, dpo, rlhf, best_of_n)")
  if config.stage in POLICY_READERS:
    return
  if where.get("run"):
    raise validate.ConfigError(f"{key} is a {upstream} run whose policy is the run "
                               f"{where['run']!r}: set config.init_from to that")
  if where.get("subtree"):
    raise validate.ConfigError(f"{key} is a {upstream} run that stores its policy under "
                               f"params[{where['subtree']!r}]; stage {config.stage!r} restores "
                               f"a plain decoder (clm, sft, dpo runs)")


def inherit_model(config) -> None:
  """A stage started from another run builds that run's architecture (an imported
  Llama, a CLM preset): the fields that shape the parameters come from
  `init_from`'s config.json; the compute dtype and remat stay this config's."""
  if not config.get("init_from") or not os.path.exists(
      os.path.join(config.init_from, CONFIG_FILE)):
    return
  upstream = model_config.architecture(load_config(config.init_from).model)
  changed = {k: v for k, v in upstream.items() if config.model.get(k) != v}
  if changed:
    logging.info("config.model from %s: %s", config.init_from, changed)
    with config.unlocked():
      for key, value in changed.items():
        config.model[key] = value


def check_model_overrides(config, keys) -> None:
  """Explicit `--config.model.KEY=...` flags (`keys`, without the 'model.' prefix
  or with it) that `inherit_model` would replace: a stage started from a run builds
  that run's architecture, so asking for another one is refused, not ignored."""
  source = config.get("init_from")
  if not source or not os.path.exists(os.path.join(source, CONFIG_FILE)):
    return
  upstream = model_config.architecture(load_config(source).model)
  conflicts = []
  for key in keys:
    name = key[len("model."):] if key.startswith("model.") else key
    if name in upstream and config.model.get(name) != upstream[name]:
      conflicts.append(f"--config.model.{name}={config.model.get(name)!r} (the run has "
                       f"{upstream[name]!r})")
  if conflicts:
    raise validate.ConfigError(
        f"{', '.join(conflicts)}: config.init_from={source!r} fixes the architecture, so the "
        f"stage builds that run's model; drop the override, or train without init_from "
        f"(only {', '.join(model_config.RUNTIME_FIELDS)} may differ)")


def check_is_run(path: str, key: str, expected: str) -> None:
  """`path` (named by the config key `key`) must be a run's workdir; `expected` says
  which kind of run the key wants."""
  if not path or not os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise validate.ConfigError(f"{key}={path!r} is not the workdir of a run (no {CONFIG_FILE}); "
                               f"{expected}")


def check_reward_run(path: str, key: str) -> None:
  """`path` (named by the config key `key`) must be a finished reward-model run."""
  if not path:
    return
  if not os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise validate.ConfigError(f"{key}={path!r} is not the workdir of a run (no {CONFIG_FILE}); "
                               f"it should name a reward-model run (configs/reward.py)")
  stage = load_config(path).get("stage", "")
  if stage != "reward":
    raise validate.ConfigError(f"{key}={path!r} is a {stage or 'unknown'} run, not a "
                               f"reward-model run (configs/reward.py)")
  if checkpoint.latest_step(os.path.join(path, "checkpoints")) is None:
    raise validate.ConfigError(f"{key}={path!r} has no checkpoint: has the reward stage run?")


# What a rerun may change and still continue the same run: how long it trains,
# how often it logs, evaluates and saves, the device layout (checkpoints reshard
# on restore), the evaluation after training, and how the model computes (the
# runtime fields: dtype, remat, attention blocks).
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
             "train.checkpoint_every", "train.max_to_keep", "train.allow_config_change",
             "mesh.", "sharding.", "evaluate.", "imports",
             *(f"model.{name}" for name in model_config.RUNTIME_FIELDS))
# What `train.allow_config_change` may change as well: how the run learns (optimizer,
# objective, rollouts), what it reads (data), its seed. Any other key (the stage, the
# architecture, the tokenizer, the runs it starts from) would leave checkpoints that
# config.json no longer describes, so it stays refused; so do the keys below.
CHANGEABLE = ("seed", "optimizer.", "data.", "objective.", "rollout.", "ppo.", "reward.",
              "ptx.", "sample.", "generate.", "best_of_n.", "preferences.", "policy")
HISTORY_FILE = "config_history.jsonl"


def _matches(key: str, prefixes) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(config, workdir: str) -> dict[str, tuple]:
  """{key: (the run's value, this config's)} for every key that differs from the
  workdir's config.json and is not RESUMABLE."""
  old = _flat(json.loads(load_config(workdir).to_json_best_effort()))
  new = _flat(json.loads(config.to_json_best_effort()))
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not _matches(k, RESUMABLE)}


def _why_fixed(key: str, old, new, config) -> str | None:
  """Why a run cannot continue with `key` changed from `old` to `new`, even with
  allow_config_change (None: it can)."""
  if key.startswith("model."):
    return "the architecture: the checkpoints hold parameters of the old shapes"
  if key.startswith("data.tokenizer_"):
    return "the tokenizer: the weights learned its token ids"
  if key == "init_from":
    return "the run this one started from (its tokenizer and, for DPO and RL, its reference)"
  if key in ("objective.critic", "objective.critic_init"):
    return "the critic: the checkpoints hold its parameters (or none)"
  o = config.get("objective") or {}
  if key == "reward.model" and o.get("critic") == "separate" and \
      o.get("critic_init") == "reward_model":
    return "the reward model the separate critic was built from"
  if key == "optimizer.grad_clip_norm" and isinstance(old, (int, float)) and \
      isinstance(new, (int, float)) and (old > 0) != (new > 0):
    return "whether gradients are clipped: the optimizer state has another structure"
  if not _matches(key, CHANGEABLE):
    return "not a setting a run can change while it continues"
  return None


def _check_rerun(config, workdir: str) -> None:
  """Refuses, before anything is written, a rerun into `workdir` that would leave a
  run its checkpoints and config.json no longer describe (see `save_config`)."""
  old = load_config(workdir)
  old_stage, stage = old.get("stage", ""), config.get("stage", "")
  if old_stage != stage:
    start = f" --config.init_from={workdir}" if old_stage in ("clm", "sft", "dpo") else ""
    raise validate.ConfigError(
        f"stage: {workdir} holds a {old_stage or 'unknown'} run and config.stage={stage!r}; "
        f"each stage writes its own workdir: --workdir=runs/{stage}{start}")
  trained = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  if trained is None:
    return
  changes = config_changes(config, workdir)
  if not changes:
    return
  diff = lambda keys: ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)
  fixed = {k: _why_fixed(k, *changes[k], config) for k in changes}
  fixed = {k: why for k, why in fixed.items() if why}
  if fixed:
    reasons = "; ".join(f"{k} is {why}" for k, why in fixed.items())
    raise validate.ConfigError(
        f"{workdir} holds a run trained with another config ({diff(fixed)}), which it cannot "
        f"continue under ({reasons}); use a new --workdir (with --config.init_from={workdir} "
        f"to start from this run's weights)")
  if not config.train.get("allow_config_change", False):
    raise validate.ConfigError(
        f"{workdir} holds a run trained with another config ({diff(changes)}); use a new "
        f"--workdir, or --config.train.allow_config_change=True to continue this run under "
        f"the new values (recorded in {HISTORY_FILE})")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
      f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": trained,
                          "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
  logging.warning("%s: continuing under a changed config: %s", workdir, sorted(changes))


def resolve(config):
  """The config as the run will train it, in place (and returned): the runs it
  names checked, the model's architecture taken from `init_from`'s run (see
  `inherit_model`), then every value checked (`validate.check`, the
  architecture against this mesh). A stage resolves its config before building
  its model; `save_config` refuses one that was not resolved."""
  check_init_from(config)
  inherit_model(config)
  validate.check(config)
  if config.get("reward") and config.reward.get("source", "model") == "model":
    check_reward_run(config.reward.get("model", ""), "config.reward.model")
  if config.get("reward") and config.reward.get("source") == "judge":
    check_is_run(config.reward.get("judge", ""), "config.reward.judge",
                 "the judge is a language-model run (research/rlhf/judge.py)")
  if config.get("evaluate"):
    check_reward_run(config.evaluate.get("reward_model", ""), "config.evaluate.reward_model")
  return config


def save_config(config, workdir: str) -> None:
  """Writes a `resolve`d config as the workdir's config.json, so tools and later
  stages can rebuild the model; it does not change the config.

  A workdir holds one stage's run. When it holds checkpoints, a rerun resumes it
  and may change only RESUMABLE keys (train for longer, another mesh, ...); with
  `config.train.allow_config_change`, also CHANGEABLE ones (learning rate,
  schedule, data, objective), each recorded in config_history.jsonl. Anything
  else (the stage, the architecture, the tokenizer, `init_from`) raises
  `validate.ConfigError` before anything is written: the run stays loadable."""
  source = config.get("init_from")
  if source and os.path.exists(os.path.join(source, CONFIG_FILE)):
    upstream = model_config.architecture(load_config(source).model)
    if any(config.model.get(k) != v for k, v in upstream.items()):
      raise ValueError(f"save_config: config.model is not {source}'s architecture; call "
                       "runs.resolve(config) first (before building the model)")
  if os.path.isfile(workdir):
    raise validate.ConfigError(f"--workdir={workdir!r} is a file, not a directory")
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    _check_rerun(config, workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, f".{CONFIG_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))  # never a half-written config.json


def write_json(workdir: str, name: str, payload: dict) -> str:
  path = os.path.join(workdir, name)
  if jax.process_index() == 0:  # whole or not at all: sweeps read summaries while points run
    tmp = os.path.join(workdir, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2, default=float)
    os.replace(tmp, path)
  return path


# --- tokenizer -------------------------------------------------------------------

def tokenizer_path(workdir: str) -> str | None:
  """A run's tokenizer: `tokenizer/` (Hugging Face files) or `tokenizer.model` (ours)."""
  for path in (os.path.join(workdir, hf_tokenizer.DIRNAME), os.path.join(workdir, TOKENIZER_FILE)):
    if os.path.exists(path):
      return path
  return None


def load_tokenizer(path: str):
  """A directory of HF tokenizer files, an HF `tokenizer.model` beside a
  tokenizer_config.json, this project's sentencepiece model, or a run's workdir
  (its tokenizer)."""
  if os.path.isdir(path):
    if any(os.path.exists(os.path.join(path, f))
           for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")):
      return hf_tokenizer.HFTokenizer.load(path)
    own = tokenizer_path(path)
    if own is None:
      raise DataError(f"{path} is not a tokenizer: it has no tokenizer.json or "
                      f"tokenizer_config.json (a Hugging Face tokenizer folder), nor a "
                      f"{TOKENIZER_FILE} or {hf_tokenizer.DIRNAME}/ (a run's workdir)")
    return load_tokenizer(own)
  return tokenizer_lib.Tokenizer.load(path)


def tokenizer_origin(config) -> str:
  """Where `tokenizer_for` takes this config's tokenizer from, in words."""
  if config.data.get("tokenizer_path"):
    return f"config.data.tokenizer_path={config.data.tokenizer_path!r}"
  if config.get("init_from"):
    return f"the one of config.init_from={config.init_from!r}"
  return "trained by this run on its data"


def tokenizer_for(config, workdir: str, texts_fn: Callable):
  """`config.data.tokenizer_path`, else the upstream run's, else trained here.

  A stage that starts from `config.init_from` must use that run's tokenizer
  (token ids are what the weights learned). The tokenizer is copied into this
  workdir so the next stage can find it.
  """
  path = config.data.tokenizer_path
  if not path and config.get("init_from"):
    path = tokenizer_path(config.init_from)
    if path is None:
      raise FileNotFoundError(f"config.init_from={config.init_from!r} has no {TOKENIZER_FILE} "
                              f"or {hf_tokenizer.DIRNAME}/")
  vocab = config.model.vocab_size
  if path:
    tok = load_tokenizer(path)
    native = isinstance(tok, tokenizer_lib.Tokenizer)
    # A pretrained model's embedding table may have spare rows (Qwen2: 151936 for
    # 151665 tokens); ours are trained to size.
    if tok.vocab_size > vocab or (native and tok.vocab_size != vocab):
      raise validate.ConfigError(f"tokenizer {path} has {tok.vocab_size} tokens but "
                                 f"config.model.vocab_size is {vocab}")
    own = os.path.join(workdir, TOKENIZER_FILE if native else hf_tokenizer.DIRNAME)
    if os.path.abspath(path) != os.path.abspath(own) and jax.process_index() == 0:
      tok.save(own)
    return tok
  own = os.path.join(workdir, TOKENIZER_FILE)
  trained = os.path.exists(own)
  try:
    return tokenizer_lib.load_or_train(own, texts_fn, vocab,
                                       byte_fallback=config.data.tokenizer_byte_fallback)
  except DataError as e:
    if trained:  # the workdir's own tokenizer is damaged: the error names it
      raise
    raise DataError(f"config.data.source={config.data.source!r}: {e}") from None  # too little text


def lineage(config) -> list[dict]:
  """The runs this config starts from, nearest first: [{run, stage, init_head?}, ...],
  following each run's `init_from` (a PMP reward run: reward <- sft <- clm)."""
  chain, source, seen = [], config.get("init_from", ""), set()
  while source and source not in seen and os.path.exists(os.path.join(source, CONFIG_FILE)):
    seen.add(source)
    upstream = load_config(source)
    entry = {"run": source, "stage": upstream.get("stage", "")}
    if upstream.get("init_head"):
      entry["init_head"] = True
    chain.append(entry)
    source = upstream.get("init_from", "")
  return chain


# --- parameters ------------------------------------------------------------------

def load_params(workdir: str, module: nn.Module, mesh, rules, step: int | None = None,
                subtree: str | None = None):
  """A run's trained parameters for `module`, placed on `mesh` (no optimizer state);
  with `subtree`, those stored under `params[subtree]`."""
  abstract = jax.eval_shape(state_lib.init_fn(module), jax.random.PRNGKey(0))
  shardings = partitioning.logical_shardings(abstract, mesh, rules)
  abstract = nn.unbox(abstract)
  if subtree:
    abstract, shardings = {subtree: abstract}, {subtree: shardings}
  params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"), abstract, shardings,
                                     step=step)
  return params[subtree] if subtree else params


def record_policy(workdir: str, *, subtree: str | None = None, run: str | None = None) -> None:
  """Where this run's language model is, for `load_policy`: under `params[subtree]`
  of its own checkpoints (RLHF's {'policy', 'value'}), or another run's (best-of-n's
  last round). Runs without the file keep the decoder's parameters at the top."""
  write_json(workdir, POLICY_FILE, {"subtree": subtree, "run": run})


def policy_location(workdir: str) -> dict:
  """What `record_policy` wrote ({} for a run whose decoder is its parameters)."""
  path = os.path.join(workdir, POLICY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_policy(workdir: str, mesh=None, rules=None, step: int | None = None):
  """(Decoder, params) of the language model trained by any run; a LoRA run's
  adapters merged into its weights (the plain decoder of the same function)."""
  config = load_config(workdir)
  where = policy_location(workdir)
  if where.get("run"):
    return load_policy(where["run"], mesh, rules, step)
  if mesh is None:
    mesh, rules = partitioning.mesh_and_rules(config)
  model = Decoder(model_config.from_config(config.model).without_lora())
  return model, load_params(workdir, model, mesh, rules, step=step, subtree=where.get("subtree"))
