import jax.numpy as jnp
import numpy as np

from research.objectives import clm
from tests import reference


def numpy_cross_entropy(logits, targets, mask, z_coef):
  logp = reference.log_softmax(logits.astype(np.float64))
  nll_t = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  m = mask.astype(bool)
  nll = nll_t[m].mean()
  z = (log_z[m] ** 2).mean()
  acc = (logits.argmax(-1) == targets)[m].mean()
  return nll + z_coef * z, nll, z, acc, m.sum()


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 7, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 7)).astype(np.int32)
  mask = rng.integers(0, 2, (3, 7)).astype(np.int32)
  loss, metrics = clm.cross_entropy(jnp.asarray(logits), targets, mask, z_loss_coef=1e-3)
  want_loss, nll, z, acc, count = numpy_cross_entropy(logits, targets, mask, 1e-3)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"], z, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], acc)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(nll), rtol=1e-5)
  assert int(metrics["num_tokens"]) == count


def test_masked_positions_cannot_leak_nan():
  logits = np.zeros((1, 4, 5), np.float32)
  logits[0, 2] = np.nan  # e.g. a padding position
  targets = np.zeros((1, 4), np.int32)
  mask = np.array([[1, 1, 0, 1]])
  loss, metrics = clm.cross_entropy(jnp.asarray(logits), targets, mask)
  np.testing.assert_allclose(loss, np.log(5), rtol=1e-6)
  assert np.isfinite(metrics["z_loss"])


def test_empty_mask_gives_zero_not_nan():
  loss, metrics = clm.cross_entropy(jnp.zeros((1, 3, 4)), np.zeros((1, 3), np.int32),
                                    np.zeros((1, 3)))
  assert float(loss) == 0.0 and int(metrics["num_tokens"]) == 0


def test_token_logprobs_sum_to_one_over_vocab():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
  all_lp = np.stack([clm.token_logprobs(jnp.asarray(logits), np.full((2, 3), v))[0]
                     for v in range(6)], -1)
  np.testing.assert_allclose(np.exp(all_lp).sum(-1), 1.0, rtol=1e-5)


def test_sequence_normalisation_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 2, (2, 10, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 10)).astype(np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 0, 0], [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]], np.int32)
  mask = np.array([[0, 1, 1, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0, 1]], np.int32)
  loss, metrics = clm.cross_entropy(jnp.asarray(logits), targets, mask, 1e-3, segments,
                                    "sequence")
  logp = reference.log_softmax(logits.astype(np.float64))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  per_example = []
  for row in range(2):
    for seg in set(segments[row]) - {0}:
      m = (segments[row] == seg) & (mask[row] == 1)
      if m.any():  # row 1 segment 1 has no masked token: skipped
        per_example.append(nll[row][m].mean() + 1e-3 * (log_z[row][m] ** 2).mean())
  assert len(per_example) == 4
  np.testing.assert_allclose(loss, np.mean(per_example), rtol=1e-5)
  # nll stays the token mean whatever the normalisation.
  np.testing.assert_allclose(metrics["nll"], nll[mask == 1].mean(), rtol=1e-5)
