"""The knobs the GRPO-family papers ablate, against plain-numpy references: DAPO's
soft overlong punishment and dynamic sampling's choice of groups, truncated
importance sampling weights, GSPO's sequence ratio and its token-level gradient."""


import jax
import jax.numpy as jnp
import numpy as np

from research.objectives import advantages, policy_gradient


def test_soft_overlong_punishment_is_dapo_eq_13():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 130, size=200)
  max_len, cache, factor = 128, 32, 0.5

  def reference(l):  # Yu et al. 2025, eq. 13, times the penalty factor
    if l <= max_len - cache:
      return 0.0
    if l <= max_len:
      return factor * ((max_len - cache) - l) / cache
    return -factor
  got = advantages.soft_overlong_punishment(lengths, max_len, cache, factor)
  np.testing.assert_allclose(got, [reference(l) for l in lengths], atol=1e-6)
  assert not advantages.soft_overlong_punishment(lengths, max_len, 0).any()  # off


def test_truncated_is_weights():
  rng = np.random.default_rng(1)
  old, sampler = rng.normal(-2, 1, (4, 9)), rng.normal(-2, 1, (4, 9))
  mask = rng.random((4, 9)) < 0.7
  got = policy_gradient.truncated_is_weights(jnp.asarray(old), jnp.asarray(sampler),
                                             jnp.asarray(mask), 2.0)
  np.testing.assert_allclose(got, np.where(mask, np.minimum(np.exp(old - sampler), 2.0), 0),
                             rtol=1e-6)


def _batch(seed=2, b=6, t=10):
  rng = np.random.default_rng(seed)
  logp = rng.normal(-2, 0.5, (b, t)).astype(np.float32)
  old = (logp + rng.normal(0, 0.02, (b, t))).astype(np.float32)
  adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1).astype(np.float32)  # one per sequence
  mask = np.zeros((b, t), bool)
  for i, n in enumerate(rng.integers(1, t + 1, b)):
    mask[i, t - n:] = True
  return logp, old, adv, mask


def test_gspo_loss_matches_numpy():
  logp, old, adv, mask = _batch()
  clip, clip_high = 3e-3, 4e-3
  loss, metrics = policy_gradient.gspo_policy_loss(jnp.asarray(logp), jnp.asarray(old),
                                                   jnp.asarray(adv), jnp.asarray(mask),
                                                   clip, clip_high)
  per_seq = []
  for i in range(len(logp)):  # Zheng et al. 2025, eq. 5: one ratio per sequence
    m = mask[i]
    s = np.exp(np.mean(logp[i, m] - old[i, m]))
    a = adv[i, m][0]
    per_seq.append(max(-a * s, -a * np.clip(s, 1 - clip, 1 + clip_high)))
  np.testing.assert_allclose(loss, np.mean(per_seq), rtol=1e-5)
  assert 0 < float(metrics["policy/clipfrac"]) < 1  # these ratios do reach the tiny clip


def test_gspo_token_gradient_equals_the_sequence_objective_s():
  """With one advantage per sequence, GSPO-token's gradient is GSPO's (the paper, sec. 4.3)."""
  logp, old, adv, mask = _batch(seed=3)
  token_loss = lambda lp: policy_gradient.gspo_policy_loss(lp, old, adv, mask, 0.2, 0.2)[0]

  def sequence_loss(lp):
    m = mask.astype(np.float32)
    s = jnp.exp(jnp.sum(jnp.where(mask, lp - old, 0.0), 1) / m.sum(1))
    a = adv[:, -1]
    return jnp.mean(jnp.maximum(-a * s, -a * jnp.clip(s, 0.8, 1.2)))
  np.testing.assert_allclose(jax.grad(token_loss)(jnp.asarray(logp)),
                             jax.grad(sequence_loss)(jnp.asarray(logp)), rtol=1e-5, atol=1e-7)


def test_ppo_loss_weights_each_token():
  logp, old, adv, mask = _batch(seed=4)
  w = np.random.default_rng(5).uniform(0, 2, logp.shape).astype(np.float32)
  loss, _ = policy_gradient.ppo_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                                            jnp.asarray(mask), 0.2, 0.28, "token_mean",
                                            jnp.asarray(w))
  r = np.exp(logp - old)
  per = np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.28)) * w
  np.testing.assert_allclose(loss, per[mask].sum() / mask.sum(), rtol=1e-5)


def test_dynamic_sampling_keeps_the_groups_that_disagree():
  from research.rlhf import online  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  g, batch = 4, 5
  draws = [rng.integers(0, 2, (6, g)).astype(np.float32).reshape(-1) for _ in range(3)]
  draws[0][:g] = 1.0  # a group that all got right: no signal
  chosen, kept = online.select_groups(draws, g, batch, dynamic=True)
  reference = [(d, i) for d, raw in enumerate(draws) for i, grp in enumerate(raw.reshape(-1, g))
               if grp.min() != grp.max()]
  assert kept == len(reference) and chosen == reference[:batch]
  assert (0, 0) not in chosen
  short, kept = online.select_groups(draws[:1], g, 6, dynamic=True)  # too few: tied ones fill
  assert kept < 6 and len(short) == 6 and short[kept:] == [
      (0, i) for i, grp in enumerate(draws[0].reshape(-1, g)) if grp.min() == grp.max()]
  assert online.select_groups(draws, g, batch, dynamic=False) == ([(0, i) for i in range(5)], 5)
