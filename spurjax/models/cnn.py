"""A small, fast CNN (~0.4M params) for tests and the 64-px built-in benchmark."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from spurjax.models.resnet import BN_EPS, BN_MOMENTUM, CONV_INIT, FC_KERNEL_INIT
from spurjax.models.conv import Conv


class SmallCNN(nn.Module):
  """conv3x3+BN+relu stages (the first at full resolution, then stride 2), GAP, dense."""
  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.widths):
      stride = 1 if i == 0 else 2
      x = Conv(width, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=CONV_INIT, dtype=self.dtype, param_dtype=jnp.float32, name=f"conv_{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                       dtype=self.dtype, param_dtype=jnp.float32, name=f"bn_{i}")(x)
      x = nn.relu(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=FC_KERNEL_INIT, dtype=self.dtype,
                      param_dtype=jnp.float32, name="fc")(features)
    logits = logits.astype(jnp.float32)
    return (logits, features) if return_features else logits
