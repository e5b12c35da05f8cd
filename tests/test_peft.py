"""PEFT LoRA adapters in and out (research/models/hf/peft.py, research.convert
--from_peft / --to_peft): an adapter PEFT wrote onto the tiny Llama fixture reads
into a LoRA run that computes PEFT's logits, adapted and merged, and writes back
as the same tensors. The fixture was made by tests/fixtures/make_peft_fixture.py."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from research import convert, runs
from research.models import config as model_config
from research.models.decoder import Decoder
from research.models.hf import peft
from research.models.hf.families import CheckpointError

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
ADAPTER = os.path.join(HERE, "peft", "llama_lora")
BASE = os.path.join(HERE, "hf", "llama")


def expected():
  with open(os.path.join(ADAPTER, "expected.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("peft")
  base = convert.import_hf(BASE, str(root / "base"))["workdir"]
  summary = convert.import_peft(ADAPTER, base, str(root / "lora"))
  return summary


def test_an_imported_adapter_computes_what_peft_computes(lora_run):
  want = expected()
  ids = jnp.asarray(want["input_ids"])
  assert (lora_run["lora_rank"], lora_run["lora_alpha"]) == (4, 8.0)
  assert lora_run["lora_targets"] == "query,key,value,out,gate,up,down"
  cfg = model_config.from_config(runs.load_config(lora_run["workdir"]).model)
  adapted = runs.load_params(lora_run["workdir"], Decoder(cfg), *_mesh(lora_run["workdir"]))
  np.testing.assert_allclose(Decoder(cfg).apply({"params": adapted}, ids),
                             np.asarray(want["logits"]), atol=1e-4, rtol=0)
  model, merged = runs.load_policy(lora_run["workdir"])  # what every stage reads: merged
  assert model.cfg.lora_rank == 0
  np.testing.assert_allclose(model.apply({"params": merged}, ids),
                             np.asarray(want["merged_logits"]), atol=1e-4, rtol=0)
  # Far from the base model: the adapters are not a no-op.
  base, base_params = runs.load_policy(os.path.join(os.path.dirname(lora_run["workdir"]), "base"))
  assert np.abs(base.apply({"params": base_params}, ids) - np.asarray(want["logits"])).max() > 0.1


def test_to_peft_writes_the_same_adapter_and_to_hf_merges(lora_run, tmp_path):
  out = convert.export_peft(lora_run["workdir"], str(tmp_path / "adapter"))
  assert sorted(out["files"]) == [peft.CONFIG_FILE, peft.WEIGHTS_FILE]
  ours = load_file(str(tmp_path / "adapter" / peft.WEIGHTS_FILE))
  theirs = load_file(os.path.join(ADAPTER, peft.WEIGHTS_FILE))
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  config = peft.read_config(str(tmp_path / "adapter"))
  with open(os.path.join(ADAPTER, peft.CONFIG_FILE), encoding="utf-8") as f:
    original = json.load(f)
  for key in ("r", "lora_alpha", "peft_type", "task_type"):
    assert config[key] == original[key], key
  assert sorted(config["target_modules"]) == sorted(original["target_modules"])
  # --to_hf: one set of weights, PEFT's merge_and_unload's function.
  convert.export_hf(lora_run["workdir"], str(tmp_path / "merged"))
  merged = convert.import_hf(str(tmp_path / "merged"), str(tmp_path / "reimported"))["workdir"]
  model, params = runs.load_policy(merged)
  np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(expected()["input_ids"])),
                             np.asarray(expected()["merged_logits"]), atol=1e-4, rtol=0)


def test_what_this_decoder_cannot_compute_alike_is_refused(lora_run, tmp_path):
  adapter = tmp_path / "rslora"
  adapter.mkdir()
  with open(os.path.join(ADAPTER, peft.CONFIG_FILE), encoding="utf-8") as f:
    config = json.load(f)
  (adapter / peft.CONFIG_FILE).write_text(json.dumps({**config, "use_rslora": True}))
  with pytest.raises(CheckpointError, match="use_rslora"):
    peft.read_config(str(adapter))
  phi3 = model_config.DecoderConfig(**{**model_config.preset("tiny"), "family": "phi3"})
  with pytest.raises(CheckpointError, match="fuses 'query'"):
    peft.modules(phi3, ("query",))
  base = os.path.join(os.path.dirname(lora_run["workdir"]), "base")
  with pytest.raises(Exception, match="trained no LoRA adapters"):
    convert.export_peft(base, str(tmp_path / "none"))
  with pytest.raises(Exception, match="not empty"):
    convert.import_peft(ADAPTER, base, lora_run["workdir"])


def _mesh(workdir):
  from research.training import partitioning  # pylint: disable=g-import-not-at-top
  return partitioning.mesh_and_rules(runs.load_config(workdir))
