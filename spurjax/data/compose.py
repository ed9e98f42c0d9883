"""One composed photograph: a cut-out object pasted onto a random crop of a scene photograph.

The scene is cropped square (a random side between `MIN_CROP` and all of the photo's short side,
at a random position) and resized to the image size; the cut-out (an RGBA photograph, cropped to
its opaque part) is scaled so its longer side is `OBJECT_SCALE` of the image side, flipped
horizontally half the time, placed wholly inside the image at a random position and
alpha-composited. The true mask is where the placed cut-out's alpha exceeds one half.

Photographs are read once per process (`scene`, `cutout` keep them), scenes already reduced so
their short side is the most any crop needs.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from spurjax.errors import SpurjaxError

MIN_CROP = 0.35             # smallest scene crop, as a fraction of the photo's short side
OBJECT_SCALE = (0.35, 0.65)  # the cut-out's longer side, as a fraction of the image side
_ALPHA_FLOOR = 8            # alpha at or below this is treated as empty when cropping a cut-out

_SCENES: dict = {}
_CUTOUTS: dict = {}


def _open(path: str, what: str) -> Image.Image:
  try:
    im = Image.open(path)
    im.load()
    return im
  except (OSError, ValueError) as e:
    raise SpurjaxError(f"photos: cannot read {what} {path} ({e})") from None


def scene(path: str, image_size: int) -> Image.Image:
  """The RGB scene photograph at `path`, reduced so its short side is image_size / MIN_CROP (never enlarged)."""
  key = (path, image_size)
  if key not in _SCENES:
    target = math.ceil(image_size / MIN_CROP)
    try:
      im = Image.open(path)
      w, h = im.size
      k = target / min(w, h)
      if im.format == "JPEG" and k < 1:
        im.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))  # decode at a reduced scale, no smaller than needed
      im = im.convert("RGB")
    except (OSError, ValueError) as e:
      raise SpurjaxError(f"photos: cannot read scene {path} ({e})") from None
    w, h = im.size
    if min(w, h) > target:
      k = target / min(w, h)
      im = im.resize((max(target, round(w * k)), max(target, round(h * k))), Image.LANCZOS)
    _SCENES[key] = im
  return _SCENES[key]


def cutout(path: str) -> Image.Image:
  """The RGBA cut-out at `path`, cropped to the box of its visible pixels."""
  if path not in _CUTOUTS:
    im = _open(path, "cut-out").convert("RGBA")
    box = im.getchannel("A").point(lambda a: 255 if a > _ALPHA_FLOOR else 0).getbbox()
    if box is None:
      raise SpurjaxError(f"photos: cut-out {path} is fully transparent")
    _CUTOUTS[path] = im.crop(box)
  return _CUTOUTS[path]


def compose(background: Image.Image, obj: Image.Image, rng: np.random.Generator, image_size: int):
  """Pastes `obj` (RGBA) on a random crop of `background` (RGB): (uint8 HWC image, bool HW mask)."""
  n = image_size
  w, h = background.size
  side = rng.uniform(MIN_CROP, 1.0) * min(w, h)
  x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
  base = background.resize((n, n), Image.LANCZOS, box=(x0, y0, x0 + side, y0 + side))
  k = rng.uniform(*OBJECT_SCALE) * n / max(obj.size)
  ow, oh = max(1, min(n, round(obj.size[0] * k))), max(1, min(n, round(obj.size[1] * k)))
  placed = obj.resize((ow, oh), Image.LANCZOS)  # Pillow resizes RGBA premultiplied: no dark fringes
  if rng.random() < 0.5:
    placed = placed.transpose(Image.FLIP_LEFT_RIGHT)
  px, py = int(rng.integers(0, n - ow + 1)), int(rng.integers(0, n - oh + 1))
  fg = np.asarray(placed, np.float32)
  alpha = fg[..., 3:] / 255.0
  image = np.asarray(base, np.float32).copy()
  region = image[py:py + oh, px:px + ow]
  region[:] = fg[..., :3] * alpha + region * (1.0 - alpha)
  mask = np.zeros((n, n), bool)
  mask[py:py + oh, px:px + ow] = alpha[..., 0] > 0.5
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask
