"""LoRA through the stages: SFT, DPO (the reference is the base with the adapters
off), the reward model (adapters + head) and GRPO, each from a run whose base
weights stay bit-identical; a LoRA run read by a later stage, an evaluation or
an export comes back merged; a resumed LoRA run continues exactly."""

import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpo as dpo_config, reward as reward_config
from configs import rlhf as rlhf_config, sft as sft_config
from research import convert, runs
from research.models import config as model_config, lora
from research.models.decoder import Decoder
from research.models.heads import ScalarModel
from research.objectives import dpo as dpo_objective
from research.rlhf import reference
from research.stages import dpo, reward, rlhf, sft
from research.training import partitioning

RANK, ALPHA = 4, 8.0


def _short(config, init_from, steps=2):
  config.init_from = init_from
  config.mesh.num_devices = 1
  config.model.update(lora_rank=RANK, lora_alpha=ALPHA)
  config.train.update(steps=steps, checkpoint_every=2, eval_every=steps)
  config.optimizer.warmup_steps = 1
  return config


def _params(workdir, module, subtree=None):
  mesh, rules = partitioning.mesh_and_rules(runs.load_config(workdir))
  return jax.device_get(runs.load_params(workdir, module, mesh, rules, subtree=subtree))


def _lora_cfg(workdir):
  return model_config.from_config(runs.load_config(workdir).model)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def lora_sft(tiny_base, tmp_path_factory):
  """A 4-step LoRA SFT run from the tiny CLM run (checkpoints at 2 and 4)."""
  config = _short(sft_config.get_config("tiny"), tiny_base, steps=4)
  config.generate.num_examples = 0
  workdir = str(tmp_path_factory.mktemp("lora_sft") / "run")
  return workdir, config, sft.run(config, workdir)


def test_sft_trains_adapters_on_a_frozen_base_and_reads_back_merged(tiny_base, lora_sft):
  workdir, _, summary = lora_sft
  assert summary["eval"]["loss"] < summary["eval_at_start"]["loss"]
  cfg = _lora_cfg(workdir)
  adapted = _params(workdir, Decoder(cfg))
  _assert_same(lora.strip(adapted), _params(tiny_base, Decoder(cfg.without_lora())))
  b = [x for p, x in flax.traverse_util.flatten_dict(adapted).items() if p[-1] == "lora_b"]
  assert len(b) == 7 * cfg.num_layers and all(np.abs(x).max() > 0 for x in b)
  # Every reader gets the merged decoder: same function as the adapted one.
  ids = jnp.asarray(np.random.default_rng(0).integers(4, 500, (2, 16)), jnp.int32)
  model, merged = runs.load_policy(workdir)
  assert model.cfg.lora_rank == 0
  np.testing.assert_allclose(model.apply({"params": merged}, ids),
                             Decoder(cfg).apply({"params": adapted}, ids), atol=1e-5, rtol=0)
  cfg_hf, exported, _, _ = convert._load_run(workdir)  # pylint: disable=protected-access
  assert cfg_hf.lora_rank == 0
  _assert_same(exported, jax.device_get(merged))


def test_a_resumed_lora_run_continues_exactly(lora_sft, tmp_path):
  workdir, config, _ = lora_sft
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "4"))
  os.remove(os.path.join(copy, "summary.json"))
  sft.run(config, copy)
  cfg = _lora_cfg(workdir)
  _assert_same(_params(copy, Decoder(cfg)), _params(workdir, Decoder(cfg)))


def test_dpo_in_step_reference_is_the_base_with_adapters_off(lora_sft):
  """The reference inside the step (LoRA, no ref_logps) equals a separate scorer
  on a copy of the base weights, with the adapters' B random (far from the base)."""
  workdir, _, _ = lora_sft
  cfg = _lora_cfg(workdir)
  params = _params(workdir, Decoder(cfg))
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 500, (2, 2, 24)).astype(np.int32)
  mask = np.ones_like(tokens)
  response = np.zeros_like(tokens)
  response[..., 10:] = 1
  batch = {"tokens": tokens, "mask": mask, "response_mask": response}
  inside = dpo_objective.reference_logps(params, batch, Decoder(cfg))
  base = Decoder(cfg.without_lora())
  mesh, rules = partitioning.mesh_and_rules(runs.load_config(workdir))
  copy = jax.tree.map(jnp.copy, lora.strip(params))
  separate = reference.ReferenceScorer(base, copy, mesh, rules).pairs(batch)
  np.testing.assert_allclose(inside, separate, atol=1e-4, rtol=1e-6)
  policy, _, _ = dpo_objective.policy_logps(params, batch, Decoder(cfg))
  assert np.abs(np.asarray(policy) - separate).max() > 1e-2  # the adapters do move it


def test_dpo_from_a_lora_run_trains_new_adapters_on_its_merged_weights(lora_sft, tmp_path):
  workdir, _, _ = lora_sft
  config = _short(dpo_config.get_config("tiny"), workdir)
  config.objective.reference = "online"
  config.evaluate.num_prompts = 0
  summary = dpo.run(config, str(tmp_path / "dpo"))
  # Policy == reference at the start: the first loss is log 2 exactly as it would be.
  np.testing.assert_allclose(summary["eval_at_start"]["loss"], np.log(2), atol=1e-6)
  cfg = _lora_cfg(str(tmp_path / "dpo"))
  trained = _params(str(tmp_path / "dpo"), Decoder(cfg))
  _, sft_merged = runs.load_policy(workdir)
  _assert_same(lora.strip(trained), jax.device_get(sft_merged))


def test_reward_model_trains_adapters_and_its_head(lora_sft, tmp_path):
  workdir, _, _ = lora_sft
  config = _short(reward_config.get_config("tiny"), workdir)
  reward.run(config, str(tmp_path / "rm"))
  cfg = _lora_cfg(str(tmp_path / "rm"))
  params = _params(str(tmp_path / "rm"), ScalarModel(cfg, head_init="reward"))
  _, sft_merged = runs.load_policy(workdir)
  trunk = lora.strip(params["decoder"])  # a scalar model has no unembedding
  _assert_same(trunk, {k: jax.device_get(sft_merged[k]) for k in trunk})
  assert np.abs(params["head"]["kernel"]).max() > 0


def test_ppo_trains_policy_and_critic_adapters_against_the_policys_own_base(lora_sft, tmp_path):
  """PPO with a separate critic started from the policy: each gets its own
  adapters (and the critic its head) on frozen bases; the reference is the
  policy's base with the adapters off, so the first iteration's KL is 0."""
  workdir, _, _ = lora_sft
  config = _short(rlhf_config.on_ground_truth(rlhf_config.get_config("tiny")), workdir)
  config.train.update(steps=2, checkpoint_every=2)
  config.ppo.epochs = 1
  config.evaluate.update(num_prompts=0, pretrain_batches=0)
  summary = rlhf.run(config, str(tmp_path / "ppo"))
  assert summary["compilations"] == 1 and summary["critic"] == "separate"
  assert summary["curves"]["objective/kl"]["start"] == 0.0  # B = 0: the policy is its base
  cfg = _lora_cfg(str(tmp_path / "ppo"))
  policy = _params(str(tmp_path / "ppo"), Decoder(cfg), subtree="policy")
  value = _params(str(tmp_path / "ppo"), ScalarModel(cfg, head_init="zeros"), subtree="value")
  _, sft_merged = runs.load_policy(workdir)
  sft_merged = jax.device_get(sft_merged)
  _assert_same(lora.strip(policy), sft_merged)
  trunk = lora.strip(value["decoder"])
  _assert_same(trunk, {k: sft_merged[k] for k in trunk})
  for tree in (policy, value["decoder"]):
    assert [p for p, x in flax.traverse_util.flatten_dict(tree).items()
            if p[-1] == "lora_b" and np.abs(x).max() > 0]
  assert np.abs(value["head"]["kernel"]).max() > 0
