"""Hugging Face checkpoints in and out.

  python -m research.convert --from_hf=DIR --workdir=OUT [--dtype=bfloat16] [--scan_layers]
      [--fsdp=N --tensor=N] [--dry_run]
  python -m research.convert --to_hf=DIR --workdir=RUN [--dtype=bfloat16]
  python -m research.convert --to_peft=DIR --workdir=LORA_RUN
  python -m research.convert --from_peft=DIR --base=RUN --workdir=OUT
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
Llama, with the sqrt(d) input scale folded into the embedding table. A LoRA run
exports merged (W + (alpha / r) A B) with --to_hf, or as its adapters alone
with --to_peft (PEFT's files, for the export of the run it started from);
--from_peft reads such an adapter onto a run (`models/hf/peft.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil

from absl import app, flags
import flax.traverse_util
import jax
import ml_collections
import numpy as np

from research import cli, distributed, runs
from research.errors import ConfigError
from research.data import hf_tokenizer
from research.models import config as model_config, lora
from research.models.decoder import Decoder, stack_layer_params, unstack_layer_params
from research.models.heads import ScalarModel
from research.models.hf import checkpoint as hf_checkpoint, families, peft
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


def _check_empty(workdir: str | None) -> None:
  """Importing over a run would replace its config.json and delete its checkpoints."""
  if workdir and os.path.isdir(workdir) and os.listdir(workdir):
    held = sorted(os.listdir(workdir))
    raise ConfigError(f"--workdir={workdir!r} is not empty (it holds {', '.join(held[:4])}"
                      f"{', ...' if len(held) > 4 else ''}); import into a new directory")
  if workdir and os.path.isfile(workdir):
    raise ConfigError(f"--workdir={workdir!r} is a file, not a directory")


def _write_run(workdir: str, config, params, meta: dict, write_tokenizer=None) -> None:
  """An imported run: config.json and the tokenizer (process 0, every process
  agreeing it worked), then the parameters as checkpoint 0 (every process)."""

  def write_config():
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
      if write_tokenizer is not None:
        write_tokenizer()

  _on_every_process("writing the workdir", write_config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  ckpt.save(0, {"params": params}, meta)
  ckpt.close()


def import_hf(hf_dir: str, workdir: str | None, *, dtype: str = "float32",
              param_dtype: str = "float32", scan_layers: bool = False, fsdp: int = 1,
              tensor: int = 1, dry_run: bool = False) -> dict:
  """Reads `hf_dir` into a workdir (see module doc); returns a summary. A workdir that
  already holds anything is refused before anything is read or written: importing
  over a run would replace its config.json and delete its checkpoints."""

  # Every process decides before process 0 writes anything, or another could find
  # its files and refuse alone.
  _on_every_process("checking --workdir", lambda: None if dry_run else _check_empty(workdir))
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

  _write_run(workdir, config, params, {"imported_from": source},
             None if tok is None else lambda: tok.save(os.path.join(workdir,
                                                                    hf_tokenizer.DIRNAME)))
  if tok is None:
    logging.warning("%s has no tokenizer.json or tokenizer.model: stages will need "
                    "--config.data.tokenizer_path", hf_dir)
  return {**summary, "workdir": workdir, "tokenizer": tok is not None}


def _load_run(workdir: str):
  """(DecoderConfig, unscanned params, is_reward, tokenizer path) of any stage's run."""
  config = runs.load_config(workdir)
  reward = config.stage == "reward"
  mesh, rules = partitioning.mesh_and_rules(config)
  cfg = model_config.from_config(config.model).without_lora()  # adapters merged on load
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


def import_peft(adapter_dir: str, base: str, workdir: str) -> dict:
  """A PEFT LoRA adapter of the run `base` (an imported Hugging Face model, or any
  run's language model, merged if it is itself a LoRA run) as a new LoRA run in
  `workdir`: the base's weights plus the adapters (`model.lora_*` from
  adapter_config.json). Stages take it as `init_from` (merged on load); `--to_peft`
  writes its adapters back."""
  _on_every_process("checking --workdir", lambda: _check_empty(workdir))
  base_config = runs.load_config(base)
  if base_config.get("stage") == "reward":
    raise ConfigError(f"--base={base!r} is a reward-model run; a PEFT causal-LM adapter "
                      f"adapts a language model")
  mesh, rules = partitioning.mesh_and_rules(base_config)
  model, params = runs.load_policy(base, mesh, rules)
  cfg = model.cfg
  adapter_cfg, found = peft.load(adapter_dir, cfg)
  targets = [p for p in model_config.LORA_PROJECTIONS if any(k[-1] == p for k in found)]
  for i in range(cfg.num_layers):
    missing = [p for p in targets if not any(k[0] == f"layer_{i}" and k[-1] == p for k in found)]
    if missing:
      raise CheckpointError(f"{adapter_dir}: layer {i} has no adapter on {missing}; this "
                            f"decoder adapts the same projections in every layer")
  dtype = cfg.weight_dtype
  adapters = {(*prefix, name): np.asarray(x, dtype) for prefix, pair in found.items()
              for name, x in zip(lora.ADAPTERS, pair)}
  tree = flax.traverse_util.unflatten_dict(adapters)
  if cfg.scan_layers:
    tree = stack_layer_params(tree, cfg.num_layers)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = lora.fill(params, jax.device_put(tree, replicated))
  rank, alpha = int(adapter_cfg["r"]), float(adapter_cfg["lora_alpha"])
  fields = {**base_config.model.to_dict(), "lora_rank": rank, "lora_alpha": alpha,
            "lora_targets": ",".join(targets)}
  source = {"peft": os.path.abspath(adapter_dir), "base": os.path.abspath(base)}
  config = _run_config(fields, "import", source, dict(base_config.get("mesh", {})), mesh.size)
  tok = runs.tokenizer_path(base)

  copy = shutil.copytree if tok and os.path.isdir(tok) else shutil.copy
  _write_run(workdir, config, params, {"imported_from": source, "lora_alpha": alpha},
             None if tok is None else lambda: copy(tok, os.path.join(workdir,
                                                                     os.path.basename(tok))))
  return {"workdir": workdir, "base": base, "lora_rank": rank, "lora_alpha": alpha,
          "lora_targets": fields["lora_targets"],
          "adapter_parameters": lora.count(params)["adapters"],
          "base_parameters": lora.count(params)["base"]}


def export_peft(workdir: str, out_dir: str) -> dict:
  """A LoRA run's adapters as a PEFT adapter directory, for PEFT to load onto the
  Hugging Face export of the run it started from (`init_from`, `--to_hf`)."""
  config = runs.load_config(workdir)
  if config.get("stage") == "reward":
    raise ConfigError(f"--workdir={workdir!r} is a reward-model run: export it merged with "
                      f"--to_hf (a PEFT causal-LM adapter has no score head)")
  cfg = model_config.from_config(config.model)
  if not cfg.lora_rank:
    raise ConfigError(f"--workdir={workdir!r} trained no LoRA adapters (model.lora_rank=0): "
                      f"export it with --to_hf")
  peft.modules(cfg, cfg.lora_projections())  # a fused family is refused before reading
  mesh, rules = partitioning.mesh_and_rules(config)
  where = runs.policy_location(workdir)
  if where.get("run"):
    return export_peft(where["run"], out_dir)
  params = runs.load_params(workdir, Decoder(cfg), mesh, rules, subtree=where.get("subtree"))
  if cfg.scan_layers:
    params = unstack_layer_params(params)
  host = {k: distributed.host_array(v) for k, v in
          flax.traverse_util.flatten_dict(params).items() if lora.is_adapter(k)}
  base = config.get("init_from", "")
  base_hf = (runs.load_config(base).get("hf", {}) or {}).get("source", "") if base else ""
  files = []
  if jax.process_index() == 0:
    tmp = f"{out_dir.rstrip('/')}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    files = peft.save(tmp, flax.traverse_util.unflatten_dict(host), cfg, alpha=cfg.lora_alpha,
                      base=base_hf or base)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
  _on_every_process("the export", lambda: None)
  return {"exported": out_dir, "base_run": base, "base_model": base_hf, "files": files,
          "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
          "targets": list(cfg.lora_projections())}


def _define_flags() -> distributed.Flags:
  """CLI flags, defined only when run as a program (importing the library must not
  clash with research.main's --workdir)."""
  flags.DEFINE_string("from_hf", None, "a local Hugging Face model directory to import")
  flags.DEFINE_string("to_hf", None, "directory to export --workdir's model to (LoRA "
                      "adapters merged)")
  flags.DEFINE_string("from_peft", None, "a PEFT LoRA adapter directory to import as a LoRA "
                      "run of --base")
  flags.DEFINE_string("base", None, "--from_peft: the run the adapter adapts (e.g. the "
                      "--from_hf import of its base model)")
  flags.DEFINE_string("to_peft", None, "directory to export --workdir's LoRA adapters to, as "
                      "PEFT's adapter_config.json + adapter_model.safetensors")
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
  if sum(bool(x) for x in (f.from_hf, f.to_hf, f.from_peft, f.to_peft)) != 1:
    cli.fail("give exactly one of --from_hf=DIR or --from_peft=DIR (import), --to_hf=DIR or "
             "--to_peft=DIR (export)")
  if bool(f.from_peft) != bool(f.base):
    cli.fail("--from_peft=DIR and --base=RUN go together (the adapter and the run it adapts)")
  if not f.workdir and not f.dry_run:
    cli.fail("--workdir is required")
  with cli.user_errors():  # CheckpointError, TokenizerError, a missing path: exit 2
    if processes is not None:
      processes.initialize()
      distributed.check_same_config(ml_collections.ConfigDict(
          {k: f[k].value for k in ("from_hf", "to_hf", "from_peft", "base", "to_peft", "dtype",
                                   "param_dtype", "scan_layers", "fsdp", "tensor", "dry_run")}),
          f.workdir or "")
    if f.from_peft:
      out = import_peft(f.from_peft, f.base, f.workdir)
    elif f.to_peft:
      out = export_peft(f.workdir, f.to_peft)
    elif f.from_hf:
      out = import_hf(f.from_hf, f.workdir, dtype=f.dtype, param_dtype=f.param_dtype,
                      scan_layers=f.scan_layers, fsdp=f.fsdp, tensor=f.tensor,
                      dry_run=f.dry_run)
    else:
      out = export_hf(f.workdir, f.to_hf, dtype=f.dtype)
  print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found"
  app.run(functools.partial(main, processes=_define_flags()), flags_parser=cli.parse_any_flags)
