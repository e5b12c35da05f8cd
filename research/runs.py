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
POLICY_READERS = ("evaluate", "preferences")


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


# What a rerun may change and still continue the same run: how long it trains,
# how often it logs, evaluates and saves, the device layout (checkpoints reshard
# on restore), the evaluation after training, and how the model computes (the
# runtime fields: dtype, remat, attention blocks).
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
             "train.checkpoint_every", "train.max_to_keep", "train.allow_config_change",
             "mesh.", "sharding.", "evaluate.", "imports",
             *(f"model.{name}" for name in model_config.RUNTIME_FIELDS))
HISTORY_FILE = "config_history.jsonl"


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
  resumable = lambda k: any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not resumable(k)}


def save_config(config, workdir: str) -> None:
  """Checks the config (`validate.check`), resolves the model from `init_from`
  (see `inherit_model`), refuses to continue a trained run under another config,
  then writes config.json so tools and later stages can rebuild the model.

  A workdir that holds checkpoints is one run: a rerun resumes it, and may change
  only RESUMABLE keys (train for longer, another mesh, ...). Any other difference
  raises `validate.ConfigError` before anything is written, unless
  `config.train.allow_config_change`; then the change is appended to
  config_history.jsonl."""
  check_init_from(config)
  inherit_model(config)
  validate.check(config)  # after inheriting: the architecture against this mesh
  trained = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)) and trained is not None:
    changes = config_changes(config, workdir)
    if changes and not config.train.get("allow_config_change", False):
      diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
      raise validate.ConfigError(
          f"{workdir} holds a run trained with another config ({diff}); use a new --workdir, "
          f"or --config.train.allow_config_change=True to continue this run under the new "
          f"values (recorded in {HISTORY_FILE})")
    if changes and jax.process_index() == 0:
      with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "step": trained,
                            "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
      logging.warning("%s: continuing under a changed config: %s", workdir, sorted(changes))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, f".{CONFIG_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))  # never a half-written config.json


def write_json(workdir: str, name: str, payload: dict) -> str:
  path = os.path.join(workdir, name)
  if jax.process_index() == 0:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2, default=float)
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
  tokenizer_config.json, or this project's sentencepiece model."""
  if os.path.isdir(path):
    return hf_tokenizer.HFTokenizer.load(path)
  return tokenizer_lib.Tokenizer.load(path)


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
  try:
    return tokenizer_lib.load_or_train(own, texts_fn, vocab,
                                       byte_fallback=config.data.tokenizer_byte_fallback)
  except DataError as e:  # too little text: name the data it came from
    raise DataError(f"config.data.source={config.data.source!r}: {e}") from None


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
  """(Decoder, params) of the language model trained by any run."""
  config = load_config(workdir)
  where = policy_location(workdir)
  if where.get("run"):
    return load_policy(where["run"], mesh, rules, step)
  if mesh is None:
    mesh, rules = partitioning.mesh_and_rules(config)
  model = Decoder(model_config.from_config(config.model))
  return model, load_params(workdir, model, mesh, rules, step=step, subtree=where.get("subtree"))
