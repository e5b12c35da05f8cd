"""A tiny imported Hugging Face model (the Qwen3 fixture, ChatML template) through
SFT -> DPO -> PPO, then exported back (~80 s)."""

import json
import os

import jax.numpy as jnp
import numpy as np

from configs import dpo as dpo_config, rlhf as rlhf_config, sft as sft_config
from research import convert, runs
from research.data import hf_tokenizer
from research.stages import dpo, rlhf, sft

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "qwen3")


def test_imported_model_runs_sft_dpo_ppo_and_exports(tmp_path):
  base = convert.import_hf(FIXTURE, str(tmp_path / "base"))["workdir"]

  c = sft_config.get_config("tiny")  # the preset's shape is replaced by the import's
  c.init_from = base
  c.mesh.num_devices = 1
  c.data.template = "hf_chat"
  c.data.update(corpus_size=400, seq_len=192)
  c.train.update(steps=30, eval_every=30, checkpoint_every=30, eval_batches=2)
  c.generate.num_examples = 4
  s = sft.run(c, str(tmp_path / "sft"))
  assert runs.load_config(str(tmp_path / "sft")).model.family == "qwen3"
  assert os.path.isdir(tmp_path / "sft" / hf_tokenizer.DIRNAME)
  assert s["eval"]["loss"] < s["eval_at_start"]["loss"] - 2  # 10.67 -> 5.10 when written

  c = dpo_config.get_config("tiny")
  c.init_from = str(tmp_path / "sft")
  c.mesh.num_devices = 1
  c.data.template = "hf_chat"
  c.data.update(corpus_size=600, seq_len=256)
  c.train.update(steps=30, eval_every=30, checkpoint_every=30, eval_batches=1)
  c.optimizer.lr = 1e-3
  c.evaluate.update(num_prompts=8, max_new_tokens=16)
  s = dpo.run(c, str(tmp_path / "dpo"))
  # The policy separates its training pairs (margin 1.40, accuracy 0.81 when written).
  assert s["train"]["rewards/margins"] > 0.5 and s["train"]["rewards/accuracies"] > 0.6

  c = rlhf_config.get_config("tiny")
  c.init_from = str(tmp_path / "sft")
  c.mesh.num_devices = 1
  c.data.template = "hf_chat"
  c.data.update(batch_size=16, corpus_size=200)
  c.reward.source = "ground_truth"  # for the report; training uses `e_rate` below
  c.objective.update(critic_init="policy", score_norm="batch")
  c.ppo.minibatch_size = 8
  c.rollout.max_new_tokens = 16
  c.train.update(steps=8, checkpoint_every=8)
  c.optimizer.lr = 1e-3
  c.evaluate.update(num_prompts=8, max_new_tokens=16, pretrain_batches=1)
  e_rate = lambda prompts, responses: [r.count("e") / max(1, len(r)) for r in responses]
  s = rlhf.run(c, str(tmp_path / "ppo"), reward=e_rate)
  curve = s["curves"]["objective/raw_scores"]
  assert s["compilations"] == 1
  assert curve["end"] > 1.5 * curve["start"]  # 0.033 -> 0.175 when written

  out = tmp_path / "ppo_hf"
  convert.export_hf(str(tmp_path / "ppo"), str(out))
  with open(out / "config.json", encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["Qwen3ForCausalLM"]
  assert (out / "tokenizer.json").exists()
  back = convert.import_hf(str(out), str(tmp_path / "back"))["workdir"]
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 420, (2, 9)))
  model, params = runs.load_policy(str(tmp_path / "ppo"))
  again_model, again = runs.load_policy(back)
  np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, ids)),
                                np.asarray(again_model.apply({"params": again}, ids)))
