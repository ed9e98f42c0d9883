"""Reading images and masks from disk, with one-line errors naming the file."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from spurjax.errors import SpurjaxError


def _open(path: str, what: str) -> Image.Image:
  if not os.path.isfile(path):
    raise SpurjaxError(f"{what} not found: {path}")
  try:
    img = Image.open(path)
    img.load()  # full decode: catches truncated files
    return img
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise SpurjaxError(f"{what} is corrupt or truncated: {path} ({type(e).__name__})") from None


def read_image(path: str) -> np.ndarray:
  """uint8 HWC RGB."""
  return np.asarray(_open(path, "image").convert("RGB"), dtype=np.uint8)


def read_mask(path: str) -> np.ndarray:
  """bool HW: nonzero pixels (of the first channel) are the object."""
  m = np.asarray(_open(path, "mask").convert("L"))
  return m > 127


def image_size(path: str, what: str = "image") -> tuple[int, int]:
  """(width, height) from the header (no full decode)."""
  if not os.path.isfile(path):
    raise SpurjaxError(f"{what} not found: {path}")
  try:
    with Image.open(path) as img:
      return img.size
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise SpurjaxError(f"{what} is corrupt or truncated: {path} ({type(e).__name__})") from None


def save_png(path: str, array: np.ndarray) -> None:
  """Writes uint8 HWC / bool HW arrays as PNG (bool -> 0/255)."""
  a = np.asarray(array)
  if a.dtype == bool:
    a = a.astype(np.uint8) * 255
  Image.fromarray(a).save(path)
