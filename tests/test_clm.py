import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.models import config as model_config
from research.models.decoder import Decoder
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


@pytest.mark.parametrize("tie,softcap,chunk,normalization",
                         [(False, 0.0, 4, "token"), (True, 3.0, 3, "token"),
                          (False, 0.0, 64, "token"), (True, 0.0, 4, "sequence")],
                         ids=["untied-4", "tied-softcap-3", "chunk-past-length", "sequence-4"])
def test_vocab_chunks_give_the_same_loss_and_gradients(tie, softcap, chunk, normalization):
  """`model.vocab_chunk`: the CLM loss (its gradient made in the forward pass,
  models/fused_loss.py), its metrics and its gradients as with the whole logits at
  once, for chunks that do not divide the length (10)."""
  base = {**model_config.preset("tiny"), "tie_embeddings": tie, "logit_softcap": softcap}
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 1024, (2, 11)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "segment_ids": np.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2], np.int32),
           "positions": np.array([list(range(6)) + list(range(4)), list(range(8)) + [0, 0]]),
           "loss_mask": np.array([[1] * 10, [1] * 8 + [0] * 2], np.int32)}
  config = ml_collections.ConfigDict({"objective": {"z_loss": 1e-3,
                                                    "loss_normalization": normalization}})
  params = None
  results = []
  for vocab_chunk in (0, chunk):
    model = Decoder(model_config.DecoderConfig(**{**base, "vocab_chunk": vocab_chunk}))
    if params is None:
      params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens[:, :4])["params"])
    fn = lambda p, m=model: clm.loss_fn(p, batch, None, model=m, config=config)
    (loss, metrics), grads = jax.value_and_grad(fn, has_aux=True)(params)
    results.append((loss, metrics, grads))
  (loss0, m0, g0), (loss1, m1, g1) = results
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  for key in m0:
    np.testing.assert_allclose(m1[key], m0[key], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g1, g0)


def test_fused_chunked_loss_matches_a_numpy_gradient():
  """models/fused_loss.py against the formula in plain numpy: loss = sum_t w_t
  (-log p(y_t) + z lse_t^2), dL/dz = w (p (1 + 2 z lse) - onehot), dh = dz W^T,
  dW = h^T dz; scaled by the cotangent of the loss."""
  from research.models import fused_loss  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  b, l, d, v, z = 2, 7, 5, 11, 0.01
  h = rng.normal(size=(b, l, d)).astype(np.float32)
  w_dv = rng.normal(size=(d, v)).astype(np.float32)
  y = rng.integers(0, v, (b, l)).astype(np.int32)
  weights = rng.uniform(0, 1, (b, l)).astype(np.float32)
  logits = h @ w_dv
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp = np.take_along_axis(logits, y[..., None], -1)[..., 0] - lse
  loss = np.sum(weights * (-logp + z * lse**2))
  p = np.exp(logits - lse[..., None])
  dz = (weights * (1 + 2 * z * lse))[..., None] * p - np.eye(v)[y] * weights[..., None]
  fn = lambda hh, ww: 3.0 * fused_loss.weighted_target_loss(  # noqa: E731
      hh, ww, y, weights, z_coef=z, chunk=3)[0]
  value, (dh, dw) = jax.value_and_grad(fn, argnums=(0, 1))(h, w_dv)
  np.testing.assert_allclose(value, 3.0 * loss, rtol=1e-5)
  np.testing.assert_allclose(dh, 3.0 * dz @ w_dv.T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dw, 3.0 * np.einsum("bld,blv->dv", h, dz), rtol=1e-4, atol=1e-6)
  _, (got_logp, got_lse, got_max) = fused_loss.weighted_target_loss(
      h, w_dv, y, weights, z_coef=z, chunk=3)
  np.testing.assert_allclose(got_logp, logp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_lse, lse, rtol=1e-5)
  np.testing.assert_allclose(got_max, logits.max(-1), rtol=1e-6)


def test_fused_chunked_loss_keeps_a_nan_at_weight_zero_out():
  """As `cross_entropy` does: non-finite logits at a position outside the loss
  (padding) reach neither the loss nor the gradients."""
  from research.models import fused_loss  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  h = rng.normal(size=(1, 5, 4)).astype(np.float32)
  h[0, 3] = np.finfo(np.float32).max  # finite, but its logits overflow
  w_dv = rng.normal(size=(4, 6)).astype(np.float32)
  with np.errstate(over="ignore", invalid="ignore"):
    assert not np.isfinite(h[0, 3] @ w_dv).all()
  weights = np.array([[0.25, 0.25, 0.25, 0.0, 0.25]], np.float32)
  fn = lambda hh, ww: fused_loss.weighted_target_loss(  # noqa: E731
      hh, ww, np.zeros((1, 5), np.int32), weights, z_coef=1e-3, chunk=2)[0]
  value, (dh, dw) = jax.value_and_grad(fn, argnums=(0, 1))(h, w_dv)
  assert np.isfinite(value) and np.isfinite(dw).all() and np.isfinite(dh).all()
  assert not np.asarray(dh)[0, 3].any()  # no gradient reaches the padding position


def test_vocab_chunks_cut_the_compiled_steps_memory():
  """What the chunks are for: XLA's own memory analysis of the compiled gradient
  (a vocabulary-heavy model: the logits are most of the step's temporaries)."""
  config = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  b, l = 4, 256
  batch = {"inputs": np.zeros((b, l), np.int32), "targets": np.zeros((b, l), np.int32),
           "segment_ids": np.ones((b, l), np.int32),
           "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
           "loss_mask": np.ones((b, l), np.int32)}
  temp = {}
  for chunk in (0, 32):
    cfg = model_config.DecoderConfig(**{**model_config.preset("tiny"), "vocab_size": 16384,
                                        "vocab_chunk": chunk})
    model = Decoder(cfg)
    params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), batch["inputs"]))
    grad = jax.jit(jax.grad(lambda p, m=model: clm.loss_fn(p, batch, None, model=m,
                                                           config=config)[0]))
    compiled = grad.lower(nn.unbox(params["params"])).compile()
    temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = b * l * 16384 * 4
  assert temp[0] > logits_bytes  # the whole logits (and their gradient) live at once
  assert temp[32] < temp[0] / 3, temp  # 161 MB -> 44 MB when written
