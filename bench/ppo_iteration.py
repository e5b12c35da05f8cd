"""One PPO iteration (rollout, scoring pass, updates), split into its phases; one JSON.

  python bench/ppo_iteration.py                              # small: 2 prompts x 4 samples x 64
  python bench/ppo_iteration.py --preset=tiny --prompts=8 --samples=8 --new_tokens=128

The iteration is what `research/stages/rlhf.py` runs per step, built from the
same pieces (`online.RolloutSource`, `ActorCritic`, the PPO loss and GAE, the
shared train step): sample G = `samples` responses of `new_tokens` for each
prompt (temperature 1, EOS off, the prompt prefilled once for its G rows),
score them (below), one jitted pass for the policy's, reference's and
critic's outputs and the advantages, then `epochs` passes of minibatches of
the rows (default one update over the whole batch). The critic is separate,
its trunk initialised from the policy (`critic_init=policy`), or with
--critic=shared a value head on the policy's trunk (one trunk less in the
scoring pass and the update); weights are
random (the `small` preset initialised with PRNGKey(0), as bench/compare.py
exports it); prompts are `prompt_tokens` ids per prompt from numpy's
default_rng(seed).

The reward is the share of even ids in the response, computed from the
decoded text (bench/peers/tunix_ppo.py scores tunix's rollouts the same way);
with --reward=FUNCTIONS, registered reward functions instead (`research/rewards/`,
e.g. 'math', 'math:1,format:0.1', 'code'), each prompt's record carrying an answer
and two assert tests, so the reward phase's cost and share of the iteration are
measured (`reward_s`, `reward_share`): the checkers run on the decoded random
text as they would on a policy's (math: extraction and comparison; code: one
sandboxed process per response, in parallel threads).

  python bench/ppo_iteration.py --preset=tiny --prompts=8 --samples=8 --reward=code
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

# The repository root, for `configs` and `research` when run as `python bench/X.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

import batches  # bench/ is on sys.path when run as a script
from research import host_memory


class WordTokenizer:
  """Id i <-> the word "ti" (the peers' tokenizer); EOS off: no id stops a row."""
  pad_id = 0
  stop_ids = (-1,)
  decode = staticmethod(batches.words)


def make_ppo_iteration(preset: str, prompts: int = 2, samples: int = 4, new_tokens: int = 64,
                       prompt_tokens: int = 16, epochs: int = 1, seed: int = 0,
                       model_overrides: dict | None = None, critic: str = "separate",
                       reward: str = "even"):
  """A function running one iteration on its own state and returning the seconds
  of its phases: {'generate_s', 'reward_s', 'score_s', 'update_s', 'total_s'}; and
  the config. `model_overrides`: config.model fields to change (bench/compare.py's
  tunix theta); `critic`: 'separate' (its own trunk) or 'shared' (a value head on
  the policy's); `reward`: 'even' or reward functions (see the module doc)."""
  from configs import rlhf as rlhf_config  # pylint: disable=g-import-not-at-top
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.models import config as model_config  # pylint: disable=g-import-not-at-top
  from research.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from research.rlhf import online, rewards  # pylint: disable=g-import-not-at-top
  from research.rlhf.actor_critic import ActorCritic  # pylint: disable=g-import-not-at-top
  from research.stages import rlhf as rlhf_stage  # pylint: disable=g-import-not-at-top
  from research.training import partitioning  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  config = rlhf_config.get_config(preset)
  config.mesh.num_devices = 1
  config.model.update(model_overrides or {})
  config.data.batch_size = prompts
  config.rollout.update(max_new_tokens=new_tokens, samples_per_prompt=samples)
  config.ppo.update(epochs=epochs, minibatch_size=prompts * samples)
  config.objective.update(critic=critic, critic_init="policy")
  config.train.steps = 1000
  config.optimizer.warmup_steps = 1
  o = config.objective
  loss_obj = objectives.get(o.name)
  estimator = objectives.get(o.advantage, kind="advantage")
  mesh, rules = partitioning.mesh_and_rules(config)
  policy = Decoder(model_config.from_config(config.model))
  ref_params = nn.unbox(policy.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  model = ActorCritic(policy, o.critic, None)
  built = rlhf_stage.build_trainer(config, model, ref_params,
                                  functools.partial(loss_obj, model=model, config=config))
  state, train_step = built.state, built.train_step
  tok = WordTokenizer()
  ids = batches.prompts(prompts, prompt_tokens, policy.cfg.vocab_size, seed)
  if reward == "even":
    source_reward = rewards.as_source(lambda _, responses: batches.even_share(responses))
  else:
    from research.rewards.scoring import FunctionReward  # pylint: disable=g-import-not-at-top
    source_reward = FunctionReward(reward, {"code_wall_seconds": 5.0})
  records = [{"answer": "42", "tests": ["assert f(1) == 2", "assert f(2) == 3"]}
             for _ in ids]
  source = online.RolloutSource(
      config, model=model, ref_params=ref_params, loss=loss_obj, estimator=estimator,
      prompts=[tok.decode(p) for p in ids], prompt_ids=[list(p) for p in ids],
      reward=source_reward, tok=tok, mesh=mesh, rules=rules, records=records)
  holder = {"state": state, "step": 0}

  def iteration() -> dict:
    start = time.perf_counter()
    work = source.next(holder["state"], holder["step"])
    rollout_s = time.perf_counter() - start
    metrics = None
    for minibatch in work.minibatches:
      holder["state"], metrics = train_step(holder["state"],
                                            partitioning.shard_batch(minibatch, mesh, rules))
    jax.block_until_ready(metrics)
    holder["step"] += 1
    total = time.perf_counter() - start
    return {"total_s": total, "generate_s": work.metrics["time/generate_s"],
            "reward_s": work.metrics["time/reward_s"],
            "score_s": work.metrics["time/score_s"], "update_s": total - rollout_s,
            "response_length": work.metrics["response/length"]}

  iteration.compilations = lambda: {**source.compilations(), "train step":
                                    train_step.compilations()}
  return iteration, config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--prompts", type=int, default=2)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--prompt_tokens", type=int, default=16)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--critic", default="separate", choices=("separate", "shared"))
  parser.add_argument("--iterations", type=int, default=5)
  parser.add_argument("--reward", default="even",
                      help="'even' (the peers' reward) or reward functions, e.g. math, code")
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # as research.main does, before JAX starts
  iteration, _ = make_ppo_iteration(args.preset, args.prompts, args.samples, args.new_tokens,
                                    args.prompt_tokens, args.epochs, critic=args.critic,
                                    reward=args.reward)
  start = time.perf_counter()
  iteration()
  first_s = time.perf_counter() - start
  iteration()  # warm
  runs = [iteration() for _ in range(args.iterations)]
  median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  rows = args.prompts * args.samples
  dev = jax.devices()[0]
  print(json.dumps({"benchmark": "ppo_iteration", "preset": args.preset, "prompts": args.prompts,
                    "samples_per_prompt": args.samples, "new_tokens": args.new_tokens,
                    "prompt_tokens": args.prompt_tokens, "epochs": args.epochs,
                    "critic": args.critic, "reward": args.reward,
                    "first_iteration_s": first_s, "median": median,
                    "reward_share": median["reward_s"] / median["total_s"],
                    "sampled_tokens_per_sec": rows * args.new_tokens / median["total_s"],
                    "compilations": iteration.compilations(), "platform": dev.platform,
                    "device_kind": dev.device_kind, "host": platform.node()}, indent=2))


if __name__ == "__main__":
  main()
