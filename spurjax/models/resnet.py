"""ResNet-18 / ResNet-50 in Flax linen, laid out exactly like torchvision's resnets.

Submodules are named after torchvision's attributes, with list entries written
`name_i`, so every flax path maps to one torchvision state-dict key:

  ("layer2_0", "downsample_1", "scale") <-> "layer2.0.downsample.1.weight"

ResNet-50 uses the v1.5 bottleneck (stride on the 3x3 conv), as torchvision does.
BatchNorm matches torchvision's defaults: torch momentum 0.1 (flax 0.9), eps 1e-5.
Note that flax updates the running variance with the biased batch variance, torch
with the unbiased one (a factor n / (n - 1), negligible for usual batch sizes).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from spurjax.models.conv import Conv, max_pool

# Initialisers as torchvision: kaiming-normal (fan_out, relu) convs, uniform(+-1/sqrt(fan_in)) fc.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
FC_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def _conv(features: int, kernel: int, stride: int, name: str, dtype) -> Conv:
  pad = (kernel - 1) // 2
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=CONV_INIT, dtype=dtype, param_dtype=jnp.float32, name=name)


def _bn(train: bool, name: str, dtype) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(_conv, dtype=self.dtype)
    bn = functools.partial(_bn, train, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(self.planes, 3, self.stride, "conv1")(x)))
    y = bn(name="bn2")(conv(self.planes, 3, 1, "conv2")(y))
    if self.downsample:
      x = bn(name="downsample_1")(conv(self.planes, 1, self.stride, "downsample_0")(x))
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 with 4x expansion (ResNet-50)."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(_conv, dtype=self.dtype)
    bn = functools.partial(_bn, train, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(self.planes, 1, 1, "conv1")(x)))
    y = nn.relu(bn(name="bn2")(conv(self.planes, 3, self.stride, "conv2")(y)))
    y = bn(name="bn3")(conv(self.planes * 4, 1, 1, "conv3")(y))
    if self.downsample:
      x = bn(name="downsample_1")(conv(self.planes * 4, 1, self.stride, "downsample_0")(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """torchvision ResNet on NHWC inputs; returns float32 logits (and pooled features)."""
  block: type[nn.Module]
  layers: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = _conv(64, 7, 2, "conv1", self.dtype)(x)
    x = nn.relu(_bn(train, "bn1", self.dtype)(x))
    x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    in_planes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers)):
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        downsample = j == 0 and (stride != 1 or in_planes != planes * self.block.expansion)
        x = self.block(planes, stride, downsample, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        in_planes = planes * self.block.expansion
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=FC_KERNEL_INIT, dtype=self.dtype,
                      param_dtype=jnp.float32, name="fc")(features)
    logits = logits.astype(jnp.float32)
    return (logits, features) if return_features else logits


def resnet18(num_classes: int, dtype=jnp.float32) -> ResNet:
  return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, dtype)


def resnet50(num_classes: int, dtype=jnp.float32) -> ResNet:
  return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, dtype)
