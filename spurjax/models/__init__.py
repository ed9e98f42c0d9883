"""Image classifiers: torchvision-layout ResNet-18/50 and a small CNN.

All models take NHWC float inputs and are called as
`model.apply(variables, x, train=..., return_features=...)`; variables hold
`params` and `batch_stats`. Logits (and features) come back in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from spurjax.errors import SpurjaxError
from spurjax.models.cnn import SmallCNN
from spurjax.models.resnet import ResNet, resnet18, resnet50

MODEL_NAMES = ("resnet18", "resnet50", "cnn", "cnn16", "cnn3")
_FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "cnn": 256, "cnn16": 128, "cnn3": 128}


def _check(name: str, num_classes: int) -> None:
  if name not in MODEL_NAMES:
    raise SpurjaxError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  if int(num_classes) < 1:
    raise SpurjaxError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")


def get_model(name: str, num_classes: int, dtype=jnp.float32) -> nn.Module:
  """The classifier `name` with `num_classes` outputs; activations in `dtype`, params float32."""
  _check(name, num_classes)
  if name == "resnet18":
    return resnet18(int(num_classes), dtype)
  if name == "resnet50":
    return resnet50(int(num_classes), dtype)
  if name == "cnn16":  # a quarter of the cnn's compute: the built-in benchmark's CPU default
    return SmallCNN(int(num_classes), widths=(16, 32, 64, 128), dtype=dtype)
  if name == "cnn3":  # three stages 32-64-128: the built-in benchmark's classifier (pretrained, see assets)
    return SmallCNN(int(num_classes), widths=(32, 64, 128), dtype=dtype)
  return SmallCNN(int(num_classes), dtype=dtype)


def feature_dim(name: str) -> int:
  """Size of the pooled penultimate features returned with `return_features=True`."""
  _check(name, 1)
  return _FEATURE_DIMS[name]


__all__ = ["MODEL_NAMES", "ResNet", "SmallCNN", "SpurjaxError", "feature_dim", "get_model"]
