"""Every image and mask resize in spurjax, in one place. Each variant keeps its own filter on purpose:
the classifier's pipeline is PIL bilinear, the prior's corpus box-shrinks and bicubic-grows, and the
diffusion-side resizes run on arrays in [0, 1] with JAX's (antialiased) linear filter."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def square_bilinear(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC -> (size, size, C) with PIL's bilinear filter; the identity at that size (classifier inputs)."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def square_box_bicubic(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC RGB -> (size, size, 3), box filter when shrinking, bicubic when growing (prior corpora)."""
  if img.shape[:2] == (size, size):
    return img
  down = min(img.shape[:2]) >= size
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BOX if down else Image.BICUBIC))


def pil_resize(img: np.ndarray, size_wh: tuple[int, int], method=Image.BILINEAR) -> np.ndarray:
  """uint8 HW or HWC array resized by PIL to (width, height) with `method`."""
  return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(tuple(size_wh), method))


def masks_nearest(masks, size: int) -> np.ndarray:
  """float32 (N, size, size) in {0, 1} from bool / 0-1 (N, H, W) masks (nearest resize)."""
  out = [pil_resize((np.asarray(x) > 0).astype(np.uint8) * 255, (size, size), Image.NEAREST) for x in masks]
  return (np.stack(out) > 127).astype(np.float32)


@functools.partial(jax.jit, static_argnums=1)
def _linear(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.image.resize(x, shape, method="linear")


def resize_images(images, size: Sequence[int]) -> np.ndarray:
  """Float NHWC images resized (bilinear, antialiased) to `size` = (h, w); the identity at the same size."""
  images = np.asarray(images, np.float32)
  h, w = int(size[0]), int(size[1])
  if images.shape[1:3] == (h, w):
    return images
  return np.asarray(_linear(jnp.asarray(images), (images.shape[0], h, w, images.shape[3])))


def resize_masks(masks, size: Sequence[int]) -> np.ndarray:
  """Boolean (B, H, W) masks resized to `size` (bilinear, then >= 0.5)."""
  masks = np.asarray(masks)
  h, w = int(size[0]), int(size[1])
  if masks.shape[1:3] == (h, w):
    return masks.astype(bool)
  return resize_images(masks.astype(np.float32)[..., None], (h, w))[..., 0] >= 0.5
