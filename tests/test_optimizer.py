import jax.numpy as jnp
import numpy as np
import pytest

from configs import common as config_common
from research.training import optimizer


def test_warmup_then_cosine_to_min_ratio():
  cfg = config_common.optimizer(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  sched = optimizer.learning_rate_schedule(cfg, total_steps=110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-6)
  # Halfway through the cosine: (peak + end) / 2.
  np.testing.assert_allclose(float(sched(60)), (1e-3 + 1e-4) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(sched(110)), 1e-4, rtol=1e-6)
  with pytest.raises(ValueError, match="warmup_steps"):
    optimizer.learning_rate_schedule(cfg, total_steps=10)


def test_weight_decay_skips_vectors():
  cfg = config_common.optimizer(lr=1.0, warmup_steps=1, weight_decay=0.5, grad_clip_norm=1.0,
                                b1=0.0, b2=0.0, eps=1e-30)
  tx, _ = optimizer.make_optimizer(cfg, total_steps=100)
  params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
  zero_grads = {"w": jnp.zeros((2, 2)), "scale": jnp.zeros((2,))}
  state = tx.init(params)
  _, state = tx.update(zero_grads, state, params)  # step 0 has lr 0
  updates, _ = tx.update(zero_grads, state, params)
  # Zero gradient: only decoupled weight decay moves the matrix, never the vector.
  assert float(jnp.abs(updates["scale"]).max()) == 0.0
  assert float(updates["w"][0, 0]) < 0.0



def test_gradients_are_clipped_to_the_global_norm_before_adam():
  """With b1 = b2 = 0, Adam's update is -lr * g / (|g| + eps); a large eps makes it
  ~ -lr * g / eps, so it shows the gradient after clipping: numpy says what it is."""
  lr, eps, clip = 1.0, 1e3, 1.0
  cfg = config_common.optimizer(lr=lr, warmup_steps=1, weight_decay=0.0, grad_clip_norm=clip,
                                b1=0.0, b2=0.0, eps=eps, min_lr_ratio=1.0)
  tx, _ = optimizer.make_optimizer(cfg, total_steps=100)
  params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
  grads = {"w": jnp.asarray([[100.0, -50.0], [30.0, 0.0]]), "scale": jnp.asarray([20.0, -10.0])}
  state = tx.init(params)
  _, state = tx.update(grads, state, params)  # step 0 has lr 0
  updates, _ = tx.update(grads, state, params)
  flat = np.concatenate([np.asarray(grads["w"]).ravel(), np.asarray(grads["scale"])])
  clipped = flat * min(1.0, clip / np.linalg.norm(flat))
  want = -lr * clipped / (np.abs(clipped) + eps)
  got = np.concatenate([np.asarray(updates["w"]).ravel(), np.asarray(updates["scale"])])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  assert np.linalg.norm(got) < 2e-3  # unclipped it would be ~0.12
