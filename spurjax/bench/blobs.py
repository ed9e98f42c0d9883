"""Object-shaped colour blobs: the negative class of `bench prior`'s strict judge.

A two-class judge (bird / flower) must name a class for every patch a prior paints, and it
does so from coarse cues (extent, aspect, colour). The strict judge gets a third class,
"blob": corpus images whose object is erased (`spurjax.ddb.inpaint.paste.erase`) and replaced by a
union of one to three ellipses of the object's extent, filled with the object's colour (or
a random one), with pixel noise and, half the time, a dark outline. A blob carries the cues
a shapeless patch has (colour, size, place, outline, noise) and none of the object's parts,
so a sample is judged a bird or a flower only where its shape says so. To keep noise from
being the cue, the object pixels of half the real images get the same kind of noise
(`noisy_object`).

Pure numpy functions of uint8 HWC images, bool HW masks and a seed.
"""
from __future__ import annotations

import numpy as np

from spurjax import rng as rng_ids
from spurjax.ddb.inpaint.paste import bbox, dilate, erase


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), rng_ids.BLOBS]))


def blob_region(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A union of 1-3 rotated ellipses spanning about the object's bounding box (bool HW)."""
  h, w = mask.shape
  t, l, b, r = bbox(mask)
  cy, cx = (t + b - 1) / 2.0, (l + r - 1) / 2.0
  ry0, rx0 = max(1.0, (b - t) / 2.0), max(1.0, (r - l) / 2.0)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  region = np.zeros((h, w), bool)
  for k in range(int(rng.integers(1, 4))):
    scale = rng.uniform(0.6, 1.05) if k == 0 else rng.uniform(0.35, 0.7)
    ry, rx = max(1.0, ry0 * scale * rng.uniform(0.8, 1.2)), max(1.0, rx0 * scale * rng.uniform(0.8, 1.2))
    oy, ox = (0.0, 0.0) if k == 0 else (rng.uniform(-0.5, 0.5) * ry0, rng.uniform(-0.5, 0.5) * rx0)
    a = rng.uniform(0, np.pi)
    dy, dx = yy - (cy + oy), xx - (cx + ox)
    u, v = dy * np.cos(a) + dx * np.sin(a), -dy * np.sin(a) + dx * np.cos(a)
    region |= (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
  if not region.any():
    region[int(round(cy)), int(round(cx))] = True
  return region


def _block_noise(rng: np.random.Generator, h: int, w: int, std: float, block: int = 2) -> np.ndarray:
  """(h, w, 3) Gaussian noise constant over `block` x `block` pixels (the prior's pixel grid at half size)."""
  n = rng.normal(0, std, size=(-(-h // block), -(-w // block), 3))
  return np.repeat(np.repeat(n, block, 0), block, 1)[:h, :w]


FILLS = ("flat", "mottled", "confetti")


def blob_image(image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
  """`image` with its object erased and an object-sized colour blob painted where it was.

  Fills (one drawn per seed): "flat" (the object's colour, or a random one, with shading and a
  little noise), "mottled" (that colour with strong blocky noise) and "confetti" (blocks of
  random saturated colours mixed into it): the kinds of patch an undertrained prior paints.
  """
  rng = _rng(seed)
  image, mask = np.asarray(image), np.asarray(mask, bool)
  clean = erase(image, dilate(mask, 1)).astype(np.float64)
  region = blob_region(mask, rng)
  if rng.random() < 0.7:
    colour = np.median(image[mask].astype(np.float64), axis=0)
  else:
    colour = rng.uniform(30, 255, size=3)
  h, w = mask.shape
  block = max(1, h // 32)
  fill = colour + np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-25, 25, size=3)  # a little shading
  kind = FILLS[int(rng.integers(len(FILLS)))]
  if kind == "flat":
    fill = fill + _block_noise(rng, h, w, rng.uniform(0, 25), block)
  elif kind == "mottled":
    fill = fill + _block_noise(rng, h, w, rng.uniform(40, 90), block)
  else:
    hb, wb = -(-h // block), -(-w // block)
    confetti = np.repeat(np.repeat(rng.uniform(0, 255, size=(hb, wb, 3)), block, 0), block, 1)[:h, :w]
    mix = rng.uniform(0.4, 0.9)
    fill = (1 - mix) * fill + mix * confetti
  out = clean.copy()
  out[region] = fill[region]
  if rng.random() < 0.5:  # a dark outline, as the real objects have
    ring = dilate(region, 1) & ~region
    out[ring] = out[ring] * 0.3
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noisy_object(image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
  """`image` with blocky noise (std up to 60 of 255) added to its object's pixels."""
  rng = _rng(seed + 1)
  x = np.asarray(image).astype(np.float64)
  m = np.asarray(mask, bool)
  x[m] += _block_noise(rng, *m.shape, rng.uniform(0, 60), max(1, m.shape[0] // 32))[m]
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)
