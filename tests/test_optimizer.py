import jax.numpy as jnp
import numpy as np
import optax
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


def test_weight_decay_skips_vectors_and_clipping_bounds_the_update():
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
  big = {"w": jnp.full((2, 2), 100.0), "scale": jnp.full((2,), 100.0)}
  clipped = optax.clip_by_global_norm(1.0).update(big, optax.EmptyState())[0]
  np.testing.assert_allclose(float(optax.global_norm(clipped)), 1.0, rtol=1e-6)
