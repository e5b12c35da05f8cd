import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpo as dpo_config
from research import objectives
from research.models import config as model_config
from research.models.decoder import Decoder
from research.objectives import dpo
from research.rlhf import reference
from research.stages import dpo as dpo_stage
from research.training import partitioning
from tests import reference as ref_np


def log_sigmoid(x):
  return -np.log1p(np.exp(-x))


@pytest.fixture
def arrays():
  rng = np.random.default_rng(0)
  pi_w, pi_l = rng.uniform(-60, -10, 6), rng.uniform(-60, -10, 6)
  ref_w, ref_l = pi_w + rng.normal(0, 2, 6), pi_l + rng.normal(0, 2, 6)
  n_w, n_l = rng.integers(5, 40, 6).astype(float), rng.integers(5, 40, 6).astype(float)
  return pi_w, pi_l, ref_w, ref_l, n_w, n_l


def check(got, want):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=1e-6)


def test_dpo_and_cdpo_match_numpy(arrays):
  pi_w, pi_l, ref_w, ref_l, _, _ = arrays
  beta, eps = 0.3, 0.1
  delta = (pi_w - ref_w) - (pi_l - ref_l)
  loss, r_w, r_l = dpo.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta)
  check(loss, -log_sigmoid(beta * delta))
  check(r_w, beta * (pi_w - ref_w))
  check(r_l, beta * (pi_l - ref_l))
  loss, _, _ = dpo.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta, eps)
  check(loss, -(1 - eps) * log_sigmoid(beta * delta) - eps * log_sigmoid(-beta * delta))


def test_ipo_slic_simpo_orpo_match_numpy(arrays):
  pi_w, pi_l, ref_w, ref_l, n_w, n_l = arrays
  beta = 0.5
  delta_bar = (pi_w - ref_w) / n_w - (pi_l - ref_l) / n_l
  check(dpo.ipo_loss(pi_w, pi_l, ref_w, ref_l, n_w, n_l, beta)[0],
        (delta_bar - 1 / (2 * beta)) ** 2)
  delta = (pi_w - ref_w) - (pi_l - ref_l)
  check(dpo.slic_loss(pi_w, pi_l, ref_w, ref_l, beta)[0], np.maximum(0, 1 - beta * delta))
  gamma = 0.7
  check(dpo.simpo_loss(pi_w, pi_l, n_w, n_l, beta, gamma)[0],
        -log_sigmoid(beta * pi_w / n_w - beta * pi_l / n_l - gamma))
  p_w, p_l = np.exp(pi_w / n_w), np.exp(pi_l / n_l)
  odds = np.log(p_w / (1 - p_w)) - np.log(p_l / (1 - p_l))
  check(dpo.orpo_loss(pi_w, pi_l, n_w, n_l, 0.2)[0], 0.2 * -log_sigmoid(odds))


def test_dpo_gradient_direction():
  """d loss / d pi_w = -beta * sigmoid(-beta delta): raising the chosen log-prob helps."""
  g = jax.grad(lambda pw: dpo.dpo_loss(pw, -20.0, -21.0, -19.0, 0.5)[0])(-20.0)
  delta = (-20.0 + 21.0) - (-20.0 + 19.0)
  np.testing.assert_allclose(g, -0.5 / (1 + np.exp(0.5 * delta)), rtol=1e-6)


def tiny_policy(seed=0):
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))["params"])
  return model, params


def pair_batch(left_pad: bool):
  """Two pairs; prompts of different lengths; padding on the left or right."""
  rng = np.random.default_rng(1)
  rows = []
  for prompt_len in (3, 6):
    prompt = [2] + list(rng.integers(4, 1000, prompt_len - 1))
    for resp_len in (4, 7):
      rows.append((prompt, list(rng.integers(4, 1000, resp_len - 1)) + [1]))
  length = 16
  tokens = np.zeros((4, length), np.int32)
  mask = np.zeros((4, length), bool)
  response_mask = np.zeros((4, length), bool)
  for i, (prompt, response) in enumerate(rows):
    seq = prompt + response
    start = length - len(seq) if left_pad else 0
    tokens[i, start:start + len(seq)] = seq
    mask[i, start:start + len(seq)] = True
    response_mask[i, start + len(prompt):start + len(seq)] = True
  return {"tokens": tokens.reshape(2, 2, length), "mask": mask.reshape(2, 2, length),
          "response_mask": response_mask.reshape(2, 2, length)}, rows


def response_logp_sums(model, params, rows):
  """2x2 summed response log-probs of `pair_batch`'s rows, each from a plain forward
  pass over the unpadded row, in float64 numpy."""
  pi = np.zeros(len(rows))
  for i, (prompt, response) in enumerate(rows):
    logits = np.asarray(model.apply({"params": params}, np.array([prompt + response]))[0])
    lp = ref_np.log_softmax(logits.astype(np.float64))
    pi[i] = sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(response))
  return pi.reshape(2, 2)


def test_sequence_logprobs_cover_response_only_and_ignore_padding_side():
  model, params = tiny_policy()
  right, rows = pair_batch(left_pad=False)
  left, _ = pair_batch(left_pad=True)
  sums_r, lengths_r, _ = dpo.policy_logps(params, right, model)
  sums_l, lengths_l, _ = dpo.policy_logps(params, left, model)
  np.testing.assert_allclose(sums_r, sums_l, atol=1e-4)
  np.testing.assert_array_equal(lengths_r, lengths_l)
  # Against a plain forward pass over the unpadded sequence, summing response tokens only.
  for i, (prompt, response) in enumerate(rows):
    logits = np.asarray(model.apply({"params": params}, np.array([prompt + response]))[0])
    lp = ref_np.log_softmax(logits.astype(np.float64))
    want = sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(response))
    np.testing.assert_allclose(np.asarray(sums_r).reshape(-1)[i], want, atol=1e-4)


def test_online_and_precomputed_reference_agree(devices):
  model, params = tiny_policy(2)
  mesh = partitioning.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices[:1])
  scorer = reference.ReferenceScorer(model, params, mesh, partitioning.DEFAULT_RULES)
  batch, _ = pair_batch(left_pad=False)
  examples = [{k: v[i] for k, v in batch.items()} for i in range(2)]
  pre = reference.precompute(examples, scorer, batch_size=2)
  online = next(reference.WithReference(iter([batch]), scorer))
  np.testing.assert_allclose(np.stack([e["ref_logps"] for e in pre]), online["ref_logps"],
                             atol=1e-5)
  sums, _, _ = dpo.policy_logps(params, batch, model)
  np.testing.assert_allclose(online["ref_logps"], sums, atol=1e-4)  # same params, same numbers


def numpy_pair_loss(name, pi, ref, n, o):
  """Plain-numpy loss of a registered pair objective (the module docstring's
  formulas) from per-sequence sums `pi`, `ref` and lengths `n`, each Bx2."""
  pw, pl, rw, rl, nw, nl = pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], n[:, 0], n[:, 1]
  delta = (pw - rw) - (pl - rl)
  if name == "dpo":
    per_pair = -log_sigmoid(o.beta * delta)
  elif name == "cdpo":
    eps = o.label_smoothing
    per_pair = -(1 - eps) * log_sigmoid(o.beta * delta) - eps * log_sigmoid(-o.beta * delta)
  elif name == "ipo":
    per_pair = ((pw - rw) / nw - (pl - rl) / nl - 1 / (2 * o.beta)) ** 2
  elif name == "slic":
    per_pair = np.maximum(0.0, 1 - o.beta * delta)
  elif name == "simpo":
    per_pair = -log_sigmoid(o.beta * pw / nw - o.beta * pl / nl - o.simpo_gamma)
  elif name == "orpo":
    log_odds = lambda m: m - np.log1p(-np.exp(m))
    per_pair = -o.orpo_lambda * log_sigmoid(log_odds(pw / nw) - log_odds(pl / nl))
  nll = -pw.sum() / nw.sum()
  return per_pair.mean() + (o.nll_coef + (name == "orpo")) * nll


@pytest.mark.parametrize("name", sorted(n for n, spec in dpo.LOSSES.items()
                                         if not spec.get("unpaired")))  # kto: test_kto.py
def test_every_registered_pair_loss_matches_numpy(name):
  """Through `objectives.get(name)`: the registered loss_fn on a padded pair batch,
  against numpy on log-probs from plain forward passes over the unpadded rows."""
  model, params = tiny_policy(3)
  batch, rows = pair_batch(left_pad=True)
  pi = response_logp_sums(model, params, rows)
  n = np.array([len(r) for _, r in rows], float).reshape(2, 2)
  ref = pi + np.random.default_rng(0).normal(0, 1.5, (2, 2))  # a reference the policy left
  batch["ref_logps"] = ref.astype(np.float32)
  config = dpo_config.get_config("tiny")
  config.objective.update(name=name, beta=0.7, label_smoothing=0.2, simpo_gamma=0.3,
                          orpo_lambda=0.4, nll_coef=0.25)
  loss, metrics = objectives.get(name)(params, batch, None, model=model, config=config)
  np.testing.assert_allclose(float(loss), numpy_pair_loss(name, pi, ref, n, config.objective),
                             rtol=2e-4)
  np.testing.assert_allclose(metrics["logps/chosen"], pi[:, 0].mean(), rtol=1e-4)
  if name in ("dpo", "cdpo", "slic"):
    np.testing.assert_allclose(metrics["rewards/margins"],
                               0.7 * ((pi - ref)[:, 0] - (pi - ref)[:, 1]).mean(),
                               rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def beta_runs(tiny_sft, tmp_path_factory):
  """beta -> summary of a 100-step DPO run from the tiny SFT model, trained the
  first time a test asks for it."""
  done = {}

  def get(beta):
    if beta not in done:
      config = dpo_config.get_config("tiny")
      config.init_from = tiny_sft
      config.mesh.num_devices = 1
      config.objective.beta = beta
      config.train.update(steps=100, eval_every=50, checkpoint_every=100)
      config.evaluate.update(num_prompts=24, samples_per_prompt=2)
      done[beta] = dpo_stage.run(config, str(tmp_path_factory.mktemp(f"dpo_{beta}")))
    return done[beta]
  return get


def test_dpo_widens_the_margin_and_raises_the_ground_truth(beta_runs):
  """beta = 0.1, 100 steps from the tiny SFT model. Thresholds: held-out preference
  accuracy >= 0.8 and margin > 0.3 (both 0 at the start); greedy ground-truth score
  above the SFT model's by > 0.1 (seen: 0.35 -> 0.8) and win rate >= 0.6."""
  s = beta_runs(0.1)
  assert s["eval_at_start"]["rewards/margins"] == 0.0
  assert s["eval"]["rewards/accuracies"] >= 0.8 and s["eval"]["rewards/margins"] > 0.3
  p = s["policy"]
  assert p["policy/ground_truth"] > p["reference/ground_truth"] + 0.1
  assert p["win_rate_vs_reference"] >= 0.6
  assert s["compilations"] == 1


@pytest.mark.slow
def test_higher_beta_stays_closer_to_the_reference(beta_runs):
  """KL(pi || pi_ref) from 48 temperature-1 samples: beta 2.0 < beta 0.1."""
  assert beta_runs(2.0)["policy"]["kl"] < beta_runs(0.1)["policy"]["kl"]
  assert beta_runs(0.1)["policy"]["kl"] > 0.5
