"""Hugging Face checkpoints in and out.

  python -m research.convert --from_hf=DIR --workdir=OUT [--dtype=bfloat16] [--scan_layers]
      [--fsdp=N --tensor=N] [--dry_run]
  python -m research.convert --to_hf=DIR --workdir=RUN [--dtype=bfloat16]
  ... --distributed [--coordinator=HOST0:PORT --num_processes=N --process_id=I]

On several processes (hosts), each one reads only the blocks of the tensors its
devices hold on import, and gathers each tensor in turn on export; process 0
alone writes the files (every process joins the checkpoint save).

Import reads a local transformers directory (config.json, model.safetensors or
a sharded index, tokenizer files) and writes a workdir that every stage takes
as `--config.init_from=OUT`: `checkpoints/` (orbax, step 0), `config.json`
(the decoder's architecture) and `tokenizer/`. A `*ForSequenceClassification`
checkpoint becomes a reward-model workdir (`--config.reward.model=OUT`).

Export writes any run's policy (CLM, SFT, DPO, PPO/A2C, best-of-n) as a
`*ForCausalLM` directory, and a reward-model run as `*ForSequenceClassification`
(`score.weight` [1, d_model], plus `score.bias` [1], which transformers' score
layer lacks and ignores: its logits are our score minus that constant, which no
preference loss or whitened reward sees). Runs of the native decoder export as
Llama, with the sqrt(d) input scale folded into the embedding table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil

from absl import app, flags
import jax
import ml_collections
import numpy as np

from research import cli, distributed, runs
from research.errors import ConfigError
from research.data import hf_tokenizer
from research.models import config as model_config
from research.models.decoder import Decoder, unstack_layer_params
from research.models.heads import ScalarModel
from research.models.hf import checkpoint as hf_checkpoint, families
from research.models.hf.families import CheckpointError, Tensor
from research.training import checkpoint, partitioning

REWARD_HEAD = {("head", "kernel"): Tensor("score.weight", "linear"),
               ("head", "bias"): Tensor("score.bias", "vector")}


def _run_config(model: dict, stage: str, source: dict, mesh: dict,
                devices: int) -> ml_collections.ConfigDict:
  """The config.json of an imported workdir: what `runs.load_config` readers get (the
  mesh it was imported on; a batch size any data split of those devices divides)."""
  return ml_collections.ConfigDict({
      "stage": stage, "seed": 0, "init_from": "", "model": {"preset": "", **model},
      "mesh": {"data": -1, "num_devices": -1, **mesh},
      "sharding": {"rules": partitioning.DEFAULT_RULES},
      "data": {"batch_size": devices, "tokenizer_path": ""}, "hf": source})


def _module(cfg, reward: bool):
  return ScalarModel(cfg, head_init="reward") if reward else Decoder(cfg)


def _mapping(cfg, reward: bool) -> dict:
  layers = families.tensor_map(cfg)
  if not reward:
    return layers
  return {**{("decoder", *k): v for k, v in layers.items()}, **REWARD_HEAD}


def _on_every_process(what: str, fn):
  """fn() here, then every process learns whether it succeeded everywhere: a
  process must not go on to a collective (the checkpoint save, a gather) that
  one which failed will never join. Re-raises this process's error, or names the
  other's."""
  try:
    out, error = fn(), None
  except Exception as e:  # pylint: disable=broad-except  # re-raised below, after agreeing
    out, error = None, e
  if not partitioning.all_processes(error is None):
    if error is not None:
      raise error
    raise CheckpointError(f"{what} failed on another process (see its error)")
  return out


def import_hf(hf_dir: str, workdir: str | None, *, dtype: str = "float32",
              param_dtype: str = "float32", scan_layers: bool = False, fsdp: int = 1,
              tensor: int = 1, dry_run: bool = False) -> dict:
  """Reads `hf_dir` into a workdir (see module doc); returns a summary. A workdir that
  already holds anything is refused before anything is read or written: importing
  over a run would replace its config.json and delete its checkpoints."""

  def check_workdir():
    if not dry_run and workdir and os.path.isdir(workdir) and os.listdir(workdir):
      held = sorted(os.listdir(workdir))
      raise ConfigError(f"--workdir={workdir!r} is not empty (it holds {', '.join(held[:4])}"
                        f"{', ...' if len(held) > 4 else ''}); import into a new directory")
    if not dry_run and workdir and os.path.isfile(workdir):
      raise ConfigError(f"--workdir={workdir!r} is a file, not a directory")

  # Every process decides before process 0 writes anything, or another could find
  # its files and refuse alone.
  _on_every_process("checking --workdir", check_workdir)
  hf = hf_checkpoint.read_config(hf_dir)
  where = os.path.join(hf_dir, "config.json")
  fields = families.decoder_fields(hf, where)
  reward = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures", []))
  model = {**model_config.defaults(), **fields, "dtype": dtype, "param_dtype": param_dtype,
           "scan_layers": scan_layers}
  cfg = model_config.DecoderConfig(**model)
  mesh_sizes = {"fsdp": fsdp, "tensor": tensor}
  mesh = partitioning.make_mesh(ml_collections.ConfigDict({"data": -1, **mesh_sizes}))
  rules = partitioning.DEFAULT_RULES
  module = _module(cfg, reward)
  boxed = jax.eval_shape(lambda r: module.init(r, np.ones((1, 8), np.int32))["params"],
                         jax.random.PRNGKey(0))
  shardings = partitioning.logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, boxed,
                          is_leaf=lambda x: hasattr(x, "value"))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  per_device = partitioning.per_device_bytes(abstract, shardings)
  summary = {"family": cfg.family, "architecture": hf.get("architectures"),
             "parameters": n_params, "mesh": dict(mesh.shape),
             "param_gib_per_device": round(per_device / 2**30, 4),
             # AdamW keeps two float32 moments per parameter.
             "adamw_gib_per_device": round(per_device / np.dtype(param_dtype).itemsize * 8
                                           / 2**30, 4)}
  if dry_run:
    return summary
  tok = None
  if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
    tok = hf_tokenizer.HFTokenizer.load(hf_dir)
  params = _on_every_process("reading the checkpoint", lambda: hf_checkpoint.load_params(
      hf_dir, cfg, abstract, shardings, mapping=_mapping(cfg, reward)))
  source = {"source": os.path.abspath(hf_dir), "architecture": (hf.get("architectures") or [""])[0]}
  config = _run_config(model, "reward" if reward else "import", source, mesh_sizes, mesh.size)

  def write_config():
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
      if tok is not None:
        tok.save(os.path.join(workdir, hf_tokenizer.DIRNAME))

  _on_every_process("writing the workdir", write_config)
  if tok is None:
    logging.warning("%s has no tokenizer.json or tokenizer.model: stages will need "
                    "--config.data.tokenizer_path", hf_dir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  ckpt.save(0, {"params": params}, {"imported_from": source})
  ckpt.close()
  return {**summary, "workdir": workdir, "tokenizer": tok is not None}


def _load_run(workdir: str):
  """(DecoderConfig, unscanned params, is_reward, tokenizer path) of any stage's run."""
  config = runs.load_config(workdir)
  reward = config.stage == "reward"
  mesh, rules = partitioning.mesh_and_rules(config)
  cfg = model_config.from_config(config.model)
  if reward:
    params = runs.load_params(workdir, _module(cfg, True), mesh, rules)
  else:
    _, params = runs.load_policy(workdir, mesh, rules)
  if cfg.scan_layers:
    params = ({**params, "decoder": unstack_layer_params(params["decoder"])} if reward
              else unstack_layer_params(params))
    cfg = dataclasses.replace(cfg, scan_layers=False)
  return cfg, params, reward, runs.tokenizer_path(workdir)


def _as_hf_family(cfg, params, reward: bool):
  """A native decoder as Llama: its sqrt(d) input scale folded into the (untied) table."""
  if cfg.family != "native":
    return cfg, params
  if cfg.tie_embeddings and cfg.embed_scale:
    raise CheckpointError("a native decoder with tied embeddings scales its inputs by "
                          "sqrt(d_model) but not its logits; no Hugging Face family does that")
  decoder = params["decoder"] if reward else params
  if cfg.embed_scale:
    table = distributed.host_array(decoder["embedding"])
    scale = np.sqrt(cfg.d_model).astype(np.float32).astype(table.dtype)
    decoder = {**decoder, "embedding": table * scale}
  cfg = dataclasses.replace(cfg, family="llama", embed_scale=False)
  return cfg, ({**params, "decoder": decoder} if reward else decoder)


def write_hf_model(cfg, params, directory: str, *, dtype: str = "float32",
                   special: dict | None = None, reward: bool = False) -> list[str]:
  """config.json and safetensors of (unscanned) `params` in `directory`, as the
  Hugging Face family of `cfg` (a native decoder as Llama); -> the weight files."""
  cfg, params = _as_hf_family(cfg, params, reward)
  families.check_exportable(cfg)
  np_dtype = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16,
              "float16": np.float16}[dtype]
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(families.hf_config(cfg, dtype=dtype, special=special or {}, reward_head=reward), f,
              indent=2)
  mapping = _mapping(cfg, True) if reward else families.tensor_map(cfg)
  tensors = lambda: ((name, arr.astype(np_dtype)) for name, arr in
                     hf_checkpoint.hf_tensors(params, mapping))
  return hf_checkpoint.save_tensors(directory, tensors)


def _export_files(tmp: str, out_dir: str, cfg, params, *, dtype: str, tok_path: str | None,
                  reward: bool) -> list[str]:
  """The tokenizer, generation config and model files into `tmp`, then `tmp` in
  place of `out_dir`."""
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  special = {}
  if tok_path and os.path.isdir(tok_path):
    tok = hf_tokenizer.HFTokenizer.load(tok_path)
    tok.save(tmp)
  elif tok_path:  # this project's sentencepiece model, as a tokenizer.json that reads alike
    from research.data import sentencepiece_hf, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    tok = tokenizer_lib.Tokenizer.load(tok_path)
    for name, text in (("tokenizer.json", sentencepiece_hf.tokenizer_json(tok.model_proto)),
                       ("tokenizer_config.json", sentencepiece_hf.dumps(
                           sentencepiece_hf.tokenizer_config(tok.model_proto)))):
      with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
        f.write(text)
  else:
    tok = None
  if tok is not None:
    special = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
      json.dump({**special, "eos_token_id": list(tok.stop_ids)}, f, indent=2)
  files = write_hf_model(cfg, params, tmp, dtype=dtype, special=special, reward=reward)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  return files


def export_hf(workdir: str, out_dir: str, *, dtype: str = "float32") -> dict:
  cfg, params, reward, tok_path = _load_run(workdir)
  cfg, params = _as_hf_family(cfg, params, reward)
  families.check_exportable(cfg)  # before anything is written
  # Process 0 writes while every process joins each tensor's gather in the same
  # order. A write that fails part-way ends process 0, and with it the
  # coordinator the others wait on.
  if jax.process_index() == 0:
    files = _export_files(f"{out_dir.rstrip('/')}.tmp{os.getpid()}", out_dir, cfg, params,
                          dtype=dtype, tok_path=tok_path, reward=reward)
  else:
    mapping = _mapping(cfg, True) if reward else families.tensor_map(cfg)
    for _ in hf_checkpoint.hf_tensors(params, mapping):
      pass
    files = []
  _on_every_process("the export", lambda: None)  # no process reports done before process 0
  return {"exported": out_dir, "family": cfg.family, "reward_model": reward, "files": files}


def _define_flags() -> distributed.Flags:
  """CLI flags, defined only when run as a program (importing the library must not
  clash with research.main's --workdir)."""
  flags.DEFINE_string("from_hf", None, "a local Hugging Face model directory to import")
  flags.DEFINE_string("to_hf", None, "directory to export --workdir's model to")
  flags.DEFINE_string("workdir", None, "the run to export, or where to import to")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                    "import: compute dtype; export: the saved tensors' dtype")
  flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16", "float16"],
                    "import: parameter dtype")
  flags.DEFINE_bool("scan_layers", False, "import: stack layers for nn.scan (large models)")
  flags.DEFINE_integer("fsdp", 1, "import: mesh fsdp size (data takes the other devices)")
  flags.DEFINE_integer("tensor", 1, "import: mesh tensor size")
  flags.DEFINE_bool("dry_run", False, "import: print parameter count and per-device memory, "
                    "write nothing")
  return distributed.define_flags()


def main(argv, processes: distributed.Flags | None = None) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  if bool(f.from_hf) == bool(f.to_hf):
    cli.fail("give exactly one of --from_hf=DIR (import) or --to_hf=DIR (export)")
  if not f.workdir and not f.dry_run:
    cli.fail("--workdir is required")
  with cli.user_errors():  # CheckpointError, TokenizerError, a missing path: exit 2
    if processes is not None:
      processes.initialize()
      distributed.check_same_config(ml_collections.ConfigDict(
          {k: f[k].value for k in ("from_hf", "to_hf", "dtype", "param_dtype", "scan_layers",
                                   "fsdp", "tensor", "dry_run")}), f.workdir or "")
    if f.from_hf:
      out = import_hf(f.from_hf, f.workdir, dtype=f.dtype, param_dtype=f.param_dtype,
                      scan_layers=f.scan_layers, fsdp=f.fsdp, tensor=f.tensor,
                      dry_run=f.dry_run)
    else:
      out = export_hf(f.workdir, f.to_hf, dtype=f.dtype)
  print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found"
  app.run(functools.partial(main, processes=_define_flags()), flags_parser=cli.parse_any_flags)
