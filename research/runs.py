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
from typing import Callable

import flax.linen as nn
import jax
import ml_collections

from research.data import hf_tokenizer, tokenizer as tokenizer_lib
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


def save_config(config, workdir: str) -> None:
  """Resolves the model from `init_from` (see `inherit_model`), then writes the
  run's config, so tools (sampling, later stages) can rebuild its model."""
  inherit_model(config)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))


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
      raise ValueError(f"tokenizer {path} has {tok.vocab_size} tokens but config.model.vocab_size "
                       f"is {vocab}")
    own = os.path.join(workdir, TOKENIZER_FILE if native else hf_tokenizer.DIRNAME)
    if os.path.abspath(path) != os.path.abspath(own) and jax.process_index() == 0:
      tok.save(own)
    return tok
  own = os.path.join(workdir, TOKENIZER_FILE)
  return tokenizer_lib.load_or_train(own, texts_fn, vocab,
                                     byte_fallback=config.data.tokenizer_byte_fallback)


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


def load_policy(workdir: str, mesh=None, rules=None, step: int | None = None):
  """(Decoder, params) of the language model trained by any run."""
  config = load_config(workdir)
  where = {}
  if os.path.exists(os.path.join(workdir, POLICY_FILE)):
    with open(os.path.join(workdir, POLICY_FILE), encoding="utf-8") as f:
      where = json.load(f)
  if where.get("run"):
    return load_policy(where["run"], mesh, rules, step)
  if mesh is None:
    mesh, rules = partitioning.mesh_and_rules(config)
  model = Decoder(model_config.from_config(config.model))
  return model, load_params(workdir, model, mesh, rules, step=step, subtree=where.get("subtree"))
