"""Scalar heads on the decoder trunk: the reward model and the PPO critic.

`ScalarModel` returns per-token values (BxL; the critic's V(s_t)) and the
sequence score read at the last real token of each row (the reward). Its
parameters are {'decoder': <a Decoder's params>, 'head': {...}}, so the trunk
starts from an SFT/CLM checkpoint and the head fresh.

Head init (Ziegler et al. 2019 / lm-human-preferences): reward head
N(0, 1/(d_model + 1)) variance; value head zeros.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import DecoderConfig
from research.models.decoder import Decoder


def last_token_index(mask_BxL):
  """Index of the last True in each row (0 for an empty row)."""
  l = mask_BxL.shape[1]
  positions = jnp.arange(l, dtype=jnp.int32)[None]
  return jnp.max(jnp.where(mask_BxL.astype(bool), positions, 0), axis=1)


class ScalarHead(nn.Module):
  """D -> 1 linear map with a bias, in float32."""

  kind: str = "reward"  # reward | zeros: the initialisation (`init` is Module.init)

  @nn.compact
  def __call__(self, hidden_BxLxD):
    d = hidden_BxLxD.shape[-1]
    kernel_init = (nn.initializers.zeros if self.kind == "zeros"
                   else nn.initializers.normal(stddev=(d + 1) ** -0.5))
    kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, ("embed",)), (d,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
    return jnp.einsum("bld,d->bl", hidden_BxLxD.astype(jnp.float32), kernel) + bias


class ScalarModel(nn.Module):
  """Decoder trunk + scalar head -> (values_BxL, score_B)."""

  cfg: DecoderConfig
  head_init: str = "reward"

  def setup(self):
    self.decoder = Decoder(self.cfg)
    self.head = ScalarHead(self.head_init)

  def __call__(self, tokens_BxL, mask_BxL=None, positions_BxL=None):
    """`mask_BxL` marks real tokens (default: all). Without `positions_BxL`, padding
    must be on the right; with positions from the mask, either side works."""
    if mask_BxL is None:
      mask_BxL = jnp.ones(tokens_BxL.shape, bool)
    segment_ids = mask_BxL.astype(jnp.int32)
    values_BxL = self.head(self.decoder.trunk(tokens_BxL, positions_BxL, segment_ids))
    score_B = jnp.take_along_axis(values_BxL, last_token_index(mask_BxL)[:, None], axis=1)[:, 0]
    return values_BxL, score_B


def packed_scores(values_RxL, sequence_RxL, num_sequences: int):
  """The value at each source row's last token in packed rows
  (`research/data/packing.py`); 0 for a row with no tokens."""
  flat_index = jnp.arange(values_RxL.size, dtype=jnp.int32).reshape(values_RxL.shape)
  ids = jnp.where(sequence_RxL >= 0, sequence_RxL, num_sequences).reshape(-1)
  last = jax.ops.segment_max(flat_index.reshape(-1), ids, num_segments=num_sequences + 1)
  last = last[:num_sequences]
  present = last >= 0
  score = values_RxL.reshape(-1)[jnp.where(present, last, 0)]
  return jnp.where(present, score, 0.0)


def scores(model: ScalarModel, params, tokens_BxL, mask_BxL):
  return model.apply({"params": params}, tokens_BxL, mask_BxL)[1]
