"""What every stage sets up the same way: tokenizer, model, mesh, optimizer, state."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import config as model_config
from research.models.decoder import Decoder
from research.training import checkpoint, optimizer, partitioning, state as state_lib
from research.data import hf_tokenizer, tokenizer as tokenizer_lib

TOKENIZER_FILE = "tokenizer.model"


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
  """`config.data.tokenizer_path`, else the upstream stage's, else trained here.

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


def decoder_config(config) -> model_config.DecoderConfig:
  return model_config.from_config(config.model)


@dataclasses.dataclass
class Setup:
  mesh: Any
  rules: Any
  tx: Any
  schedule: Any
  state: Any
  shardings: Any
  abstract_state: Any


def mesh_and_rules(config):
  mesh = partitioning.make_mesh(config.mesh)
  rules = partitioning.rules_from_config(config)
  for key, size in (("config.data.batch_size", config.data.batch_size),):
    ways = partitioning.batch_axis_size(mesh, rules)
    if size % ways:
      raise ValueError(f"{key}={size} must be divisible by the {ways} ways the batch is "
                       f"sharded (config.mesh {dict(mesh.shape)})")
  return mesh, rules


def init_fn(module: nn.Module, seq_len: int = 8) -> Callable:
  """rng -> boxed params of a module that takes token ids."""
  return lambda rng: module.init(rng, jnp.ones((1, seq_len), jnp.int32))["params"]


def setup(config, module: nn.Module, total_steps: int,
          init_params: Callable | None = None, init_subtree: str | None = None) -> Setup:
  """Mesh, optimizer and the sharded TrainState.

  With `config.init_from`, the parameters come from that run's checkpoint: all
  of them, or, with `init_subtree`, only `params[init_subtree]` (a reward
  model's trunk from an SFT run, with a fresh head).
  """
  mesh, rules = mesh_and_rules(config)
  tx, schedule = optimizer.make_optimizer(config.optimizer, total_steps)
  init_params = init_params or init_fn(module)
  abstract, shardings = state_lib.abstract_state(init_params, tx, mesh, rules, config.seed)
  params = None
  if config.get("init_from"):
    target = abstract.params[init_subtree] if init_subtree else abstract.params
    target_shardings = shardings.params[init_subtree] if init_subtree else shardings.params
    params = checkpoint.restore_params(os.path.join(config.init_from, "checkpoints"),
                                       target, target_shardings)
    logging.info("initialised %s from %s", init_subtree or "parameters", config.init_from)
  if init_subtree:
    state, shardings = state_lib.create_state(init_params, tx, mesh, rules, config.seed)
    if params is not None:  # Adam's moments start at zero whatever the values
      state = state.replace(params={**state.params, init_subtree: params})
  else:
    state, shardings = state_lib.create_state(init_params, tx, mesh, rules, config.seed, params)
  return Setup(mesh, rules, tx, schedule, state, shardings, abstract)


def train(config, workdir: str, module: nn.Module, *, train_iter, eval_batches,
          hooks=(), tokens_per_batch: int = 0, init_params: Callable | None = None,
          init_subtree: str | None = None):
  """Sharded state -> the registered objective through the one step factory -> the loop.

  `eval_batches=None` trains without held-out evaluation.

  Returns (LoopResult, Setup, train_step)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.training import loop, step as step_lib  # pylint: disable=g-import-not-at-top
  s = setup(config, module, config.train.steps, init_params, init_subtree)
  loss = functools.partial(objectives.get(config.objective.name), model=module, config=config)
  train_step = step_lib.make_train_step(
      loss, tx=s.tx, state_shardings=s.shardings, mesh=s.mesh, rules=s.rules,
      schedule=s.schedule, microbatches=config.optimizer.grad_accum_steps)
  eval_step = None if eval_batches is None else step_lib.make_eval_step(
      loss, params_sharding=s.shardings.params, mesh=s.mesh, rules=s.rules)
  result = loop.run(
      train_cfg=config.train, workdir=workdir, state=s.state, abstract_state=s.abstract_state,
      state_shardings=s.shardings, train_step=train_step,
      source=loop.IteratorSource(train_iter), mesh=s.mesh,
      rules=s.rules, eval_step=eval_step, eval_batches=eval_batches,
      tokens_per_batch=tokens_per_batch, hooks=hooks)
  return result, s, train_step


# Where each stage keeps the language model's parameters inside its `params`
# (RLHF trains {'policy': ..., 'value': ...}; the others train the decoder alone).
POLICY_SUBTREE = {"rlhf": "policy"}


def load_params(workdir: str, module: nn.Module, mesh, rules, step: int | None = None,
                subtree: str | None = None):
  """A run's trained parameters for `module`, placed on `mesh` (no optimizer state);
  with `subtree`, those stored under `params[subtree]`."""
  abstract = jax.eval_shape(init_fn(module), jax.random.PRNGKey(0))
  shardings = partitioning.logical_shardings(abstract, mesh, rules)
  abstract = nn.unbox(abstract)
  if subtree:
    abstract, shardings = {subtree: abstract}, {subtree: shardings}
  params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"), abstract, shardings,
                                     step=step)
  return params[subtree] if subtree else params


def load_policy(workdir: str, mesh=None, rules=None):
  """(Decoder, params) of the language model trained by any stage's run."""
  config = load_config(workdir)
  if config.stage == "best_of_n":  # the policy is the last round's fine-tuning run
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
      workdir = json.load(f)["final"]
  if mesh is None:
    mesh, rules = mesh_and_rules(config)
  model = Decoder(decoder_config(config))
  return model, load_params(workdir, model, mesh, rules,
                            subtree=POLICY_SUBTREE.get(config.stage))


def describe(config, module: nn.Module) -> dict[str, Any]:
  """Parameter count and per-device bytes, from abstract shapes only (no allocation)."""
  mesh, rules = mesh_and_rules(config)
  tx, _ = optimizer.make_optimizer(config.optimizer, max(config.train.steps, 2))
  abstract, shardings = state_lib.abstract_state(init_fn(module), tx, mesh, rules, config.seed)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  params_b = partitioning.per_device_bytes(abstract.params, shardings.params)
  opt_b = partitioning.per_device_bytes(abstract.opt_state, shardings.opt_state)
  return {"parameters": n_params, "mesh": dict(mesh.shape), "devices": mesh.size,
          "param_bytes_per_device": params_b, "optimizer_bytes_per_device": opt_b,
          "state_gib_per_device": round((params_b + opt_b) / 2**30, 3)}


CONFIG_FILE = "config.json"


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


def load_config(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a run?")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def write_json(workdir: str, name: str, payload: dict) -> str:
  path = os.path.join(workdir, name)
  if jax.process_index() == 0:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2, default=float)
  return path


def derived_seed(seed: int, purpose: str) -> int:
  """One config seed, a distinct stream per purpose (data order, sampling, ...)."""
  return int(np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1)[0])
