"""Grad-CAM of the ERM classifier toward each image's class on the last module with a 4-D (NHWC)
output, found by intercepting module calls (no change to the models is needed; for ResNets that
is the last residual block, for SmallCNN its last BatchNorm, taken through its ReLU).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spurjax import sharding
from spurjax.ddb.segment.masks import normalise_maps
from spurjax.errors import SpurjaxError


def feature_module_path(model: nn.Module, variables, image_shape: Sequence[int]) -> tuple[str, ...]:
  """Path of the last submodule whose call returns a 4-D (NHWC) array: the Grad-CAM layer."""
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    if context.method_name == "__call__" and path and getattr(out, "ndim", 0) == 4:
      seen.append(path)
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  if not seen:
    raise SpurjaxError(f"gradcam: {type(model).__name__} has no submodule with a 4-D (NHWC) output")
  return seen[-1]


def _logits_with_delta(model, path, variables, x, delta):
  """Logits with `delta` added to the output of module `path`; also returns that output."""
  found = {}

  def icpt(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and tuple(context.module.path) == path:
      out = out + delta.astype(out.dtype)
      found["a"] = out
    return out

  with nn.intercept_methods(icpt):
    logits = model.apply(variables, x, train=False)
  return logits, found["a"]


@dataclasses.dataclass(frozen=True)
class _GradCam:
  """Grad-CAM of `model` on module `path` (hashes by value: one compiled program per equal setting)."""
  model: nn.Module
  path: tuple
  mean: tuple
  std: tuple
  feature_shape: tuple

  def __call__(self, variables, images, classes):
    from spurjax.train.step import normalise
    x = normalise(images, self.mean, self.std)

    def score(delta):
      logits, acts = _logits_with_delta(self.model, self.path, variables, x, delta)
      picked = jnp.take_along_axis(logits.astype(jnp.float32), classes[:, None], axis=1)
      return picked.sum(), acts

    delta = jnp.zeros((images.shape[0],) + self.feature_shape, jnp.float32)
    grads, acts = jax.grad(score, has_aux=True)(delta)
    acts = jax.nn.relu(acts.astype(jnp.float32))
    alpha = grads.mean(axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts, alpha))
    return jax.image.resize(cam, (images.shape[0],) + images.shape[1:3], method="linear")


def gradcam_maps(model: nn.Module, variables, images, classes, *, mean: Sequence[float], std: Sequence[float],
                 mesh=None, batch_size: int = 32) -> np.ndarray:
  """Grad-CAM maps (B, H, W) float32 in [0, 1] of uint8 `images` toward `classes`, at the images' size."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise SpurjaxError(f"gradcam: expected uint8 (B, H, W, 3) images, got {images.dtype} {images.shape}")
  classes = np.asarray(classes, np.int32).reshape(-1)
  variables = {k: v for k, v in dict(variables).items()}
  path = feature_module_path(model, variables, images.shape[1:])
  prog = _GradCam(model, path, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                  _feature_shape(model, path, variables, images.shape[1:]))
  maps = sharding.map_batches(prog, (variables,), (images, classes), mesh=mesh, batch_size=batch_size)
  return np.asarray(normalise_maps(jnp.asarray(maps)))


def _feature_shape(model, path, variables, image_shape) -> tuple[int, ...]:
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and tuple(context.module.path) == path:
      shapes["s"] = tuple(out.shape[1:])
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  return shapes["s"]
