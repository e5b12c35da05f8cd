"""Peer: one PPO iteration of tunix's `PPOLearner` (rollout, scoring, actor and critic updates).

Runs in its own environment (not this project's requirements, never in CI):

  python -m venv /tmp/tunix && /tmp/tunix/bin/pip install google-tunix

  python bench/peers/tunix_ppo.py --model_dir=DIR --prompts=2 --samples=4 --new_tokens=64
  python bench/peers/tunix_ppo.py --model_dir=DIR ... --serve

The actor, the frozen reference and the critic are the Hugging Face export
(`research.convert.write_hf_model`) loaded as tunix's `Llama3`; the critic's
unembedding is replaced by a 1-output projection (a value head on its own
trunk, as the project's separate critic). An iteration samples one response
of `new_tokens` (temperature 1, EOS off) for each of prompts x samples rows
(tunix's PPO draws one response per prompt, so each prompt appears `samples`
times), scores them with a reward function, computes the reference's and the
old policy's log-probs, the critic's values and GAE, and makes one actor and
one critic update over the whole batch (one epoch, one minibatch), then syncs
the rollout weights: the loop of `tunix.rl.rl_learner.RLLearner.train`.

Timing: the learner pulls one batch of prompts per iteration from an iterator;
the time between two pulls is one iteration. Two iterations warm up (compile);
with `--serve`, each stdin line releases one more batch and is answered with
that iteration's seconds (bench/peers/serve.py's protocol).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np

import serve  # bench/peers/serve.py, beside this script
from tunix_generate import WordTokenizer, load_llama, versions  # beside this script
import batches  # bench/batches.py (importing tunix_generate put bench/ on sys.path)


LENGTHS = []  # the response lengths (in ids) of the latest rollout, seen by reward_fn


def reward_fn(prompts, completions, **_):
  """bench/batches.py's reward (the project's side scores its rollouts the same way)."""
  del prompts
  LENGTHS[:] = [len(c.split()) for c in completions]
  return batches.even_share(completions)


def _critic_class():
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Critic(nnx.Module):
    """The Llama3 trunk with a value head. tunix's value pass also hands over
    `segment_ids` (the padding mask again, for kernels without a 2-D mask),
    which Llama3's call does not take; the attention mask carries the same."""

    def __init__(self, trunk):
      self.trunk = trunk

    def __call__(self, input_tokens, positions, cache, attention_mask, segment_ids=None):
      del segment_ids
      return self.trunk(input_tokens, positions, cache, attention_mask)

  return Critic


def build_learner(args):
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tunix.rl import rl_cluster as rl_cluster_lib  # pylint: disable=g-import-not-at-top
  from tunix.rl.ppo import ppo_learner  # pylint: disable=g-import-not-at-top
  from tunix.rl.rollout import base_rollout  # pylint: disable=g-import-not-at-top

  actor, config = load_llama(args.model_dir)
  reference, _ = load_llama(args.model_dir)
  critic, _ = load_llama(args.model_dir)
  critic.lm_head = nnx.Linear(config.embed_dim, 1, use_bias=True, rngs=nnx.Rngs(0))
  critic = _critic_class()(critic)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rows = args.prompts * args.samples
  roles = rl_cluster_lib.Role
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={roles.ACTOR: mesh, roles.CRITIC: mesh, roles.REFERENCE: mesh,
                    roles.ROLLOUT: mesh},
      rollout_engine="vanilla",
      offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optax.adamw(args.lr), critic_optimizer=optax.adamw(args.lr),
          eval_every_n_steps=10 ** 9, max_steps=10 ** 9, mini_batch_size=rows,
          train_micro_batch_size=rows),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=args.new_tokens, max_prompt_length=args.prompt_tokens,
          kv_cache_size=args.prompt_tokens + args.new_tokens + 8, temperature=1.0, top_p=1.0,
          eos_tokens=[-1]))
  cluster = rl_cluster_lib.RLCluster(actor=actor, critic=critic, reference=reference,
                                     tokenizer=WordTokenizer(), cluster_config=cluster_config)
  learner = ppo_learner.PPOLearner(
      rl_cluster=cluster, reward_fns=reward_fn,
      ppo_config=ppo_learner.PPOConfig(num_iterations=1, beta=args.beta, gamma=1.0,
                                       gae_lambda=0.95, epsilon=0.2, kl_method="kl"))
  return learner, config


def main() -> None:
  parser = serve.parser(__doc__)
  parser.add_argument("--prompts", type=int, default=2)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--prompt_tokens", type=int, default=16)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-5)
  parser.add_argument("--beta", type=float, default=0.05)
  parser.add_argument("--iterations", type=int, default=3, help="without --serve")
  args = parser.parse_args()
  learner, config = build_learner(args)
  ids = batches.prompts(args.prompts, args.prompt_tokens, config.vocab_size, args.seed)
  prompts = [batches.words(row) for row in np.repeat(ids, args.samples, axis=0)]
  info = versions()

  def prompt_batches():
    """One batch per iteration; the gap between two pulls is one iteration."""
    for _ in range(2):  # compile
      yield {"prompts": prompts}
    if args.serve:
      print(json.dumps({"ready": True}), flush=True)
    done = 0
    while args.serve or done < args.iterations:
      if args.serve and not sys.stdin.readline():
        return
      start = time.perf_counter()
      yield {"prompts": prompts}
      seconds = time.perf_counter() - start
      print(json.dumps({"peer": "tunix_ppo", "seconds": seconds,
                        "response_length": float(np.mean(LENGTHS)), **info}), flush=True)
      done += 1

  learner.train(prompt_batches())


if __name__ == "__main__":
  main()
