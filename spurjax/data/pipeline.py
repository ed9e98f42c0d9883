"""Input pipeline on grain: decode, resize / crop, augment, batch, shard.

Host side produces uint8 images (normalisation happens on device, in the train step);
each process builds only its slice of every global batch and `spurjax.sharding.shard_batch`
assembles the global `jax.Array`.

Determinism: the order of an epoch and every example's augmentation depend only on
(seed, epoch, position), so a resumed run sees exactly the batches an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import grain
import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from spurjax import rng as rng_ids
from spurjax.data.resize import square_bilinear
from spurjax.data.table import GENERATED, Table


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Resize / crop settings (all sizes in pixels).

  Eval: optional center crop of `center_crop` (CelebA's 178), resize to `resize` (square),
  center crop `image_size`. Train: random-resized-crop to `image_size` with `scale` of the
  area and aspect `ratio`, horizontal flip with probability `flip`.
  """

  image_size: int = 64
  resize: Optional[int] = None  # default: image_size (no crop margin)
  center_crop: Optional[int] = None
  scale: tuple = (0.7, 1.0)
  ratio: tuple = (0.75, 4 / 3)
  flip: float = 0.5
  augment: bool = True

  @property
  def resize_to(self) -> int:
    return self.resize or self.image_size


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
  h, w = img.shape[:2]
  size_h, size_w = min(size, h), min(size, w)
  top, left = (h - size_h) // 2, (w - size_w) // 2
  return img[top:top + size_h, left:left + size_w]


def base_image(img: np.ndarray, pp: Preprocess) -> np.ndarray:
  """The deterministic part: optional center crop, then square resize (what the cache holds)."""
  if pp.center_crop:
    img = _center_crop(img, pp.center_crop)
  return square_bilinear(img, pp.resize_to)


def base_image_at(img: np.ndarray, pp: Preprocess, size: int) -> np.ndarray:
  """`base_image` at another square size, straight from the source image (e.g. at a diffusion model's
  resolution, with no detour through the classifier's smaller base image)."""
  return base_image(img, dataclasses.replace(pp, resize=int(size)))


def eval_view(base: np.ndarray, pp: Preprocess) -> np.ndarray:
  return square_bilinear(_center_crop(base, pp.image_size), pp.image_size)


def train_view(base: np.ndarray, pp: Preprocess, rng: np.random.Generator) -> np.ndarray:
  """Random-resized-crop + flip of a base image."""
  if not pp.augment:
    return eval_view(base, pp)
  h, w = base.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*pp.scale)
    aspect = np.exp(rng.uniform(np.log(pp.ratio[0]), np.log(pp.ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      crop = base[top:top + ch, left:left + cw]
      break
  else:
    crop = _center_crop(base, min(h, w))
  out = np.asarray(Image.fromarray(crop).resize((pp.image_size, pp.image_size), Image.BILINEAR))
  if rng.uniform() < pp.flip:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


class ImageSource:
  """Random access to base images of a table, optionally cached in memory as uint8."""

  def __init__(self, table: Table, pp: Preprocess, cache: bool = False, indices=None):
    self.table, self.pp = table, pp
    self._cache = None
    if cache:
      idx = np.arange(len(table)) if indices is None else np.unique(np.asarray(indices))
      s = pp.resize_to
      arr = np.zeros((len(table), s, s, 3), np.uint8)
      for i in tqdm(idx, desc=f"loading {table.name}", leave=False, mininterval=1.0, disable=len(idx) < 500):
        arr[i] = self._base(int(i))
      self._cache = arr

  def _base(self, i: int) -> np.ndarray:
    """Row i as a base image. Generated rows (DDB's edits, erased backgrounds) were made from base images
    and are base images already: they are only resized, never centre-cropped a second time."""
    pp = self.pp
    if pp.center_crop and self.table.split[i] == GENERATED:
      pp = dataclasses.replace(pp, center_crop=None)
    return base_image(self.table.image(i), pp)

  def __call__(self, i: int) -> np.ndarray:
    if self._cache is not None:
      return self._cache[i]
    return self._base(int(i))


def _process_slice(n_global: int) -> tuple[int, int]:
  p, n = jax.process_index(), jax.process_count()
  local = n_global // n
  return p * local, local


def epoch_order(num: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, rng_ids.EPOCH_ORDER]).permutation(num)


def train_batches(source: ImageSource, indices: np.ndarray, *, labels: np.ndarray, groups: np.ndarray,
                  weights: np.ndarray, batch_size: int, seed: int, epoch: int,
                  num_threads: int = 2) -> Iterator[dict]:
  """This process's slices of the global training batches of one epoch (drop remainder).

  `indices` may repeat (upsampling); `labels`, `groups`, `weights` are per position in `indices`.
  """
  order = epoch_order(len(indices), seed, epoch)
  steps = len(order) // batch_size
  start, local = _process_slice(batch_size)
  pos = order[:steps * batch_size].reshape(steps, batch_size)[:, start:start + local].reshape(-1)
  pp = source.pp

  def load(position):
    position = int(position)
    rng = np.random.default_rng([seed, epoch, position, rng_ids.AUGMENT])
    i = int(indices[position])
    return {
        "image": train_view(source(i), pp, rng),
        "label": np.int32(labels[position]),
        "group": np.int32(groups[position]),
        "weight": np.float32(weights[position]),
        "index": np.int32(i),
    }

  ds = grain.MapDataset.source(pos).map(load).batch(local, drop_remainder=True)
  opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * max(local, 1))
  yield from ds.to_iter_dataset(opts)


def eval_batches(source: ImageSource, indices: np.ndarray, *, labels: np.ndarray, groups: np.ndarray,
                 batch_size: int, num_threads: int = 2) -> Iterator[dict]:
  """Every example once, the last global batch padded (`valid` = 0 on padding)."""
  n = len(indices)
  padded = -(-n // batch_size) * batch_size
  start, local = _process_slice(batch_size)
  pos = np.arange(padded).reshape(-1, batch_size)[:, start:start + local].reshape(-1)
  pp = source.pp

  def load(position):
    position = int(position)
    valid = position < n
    j = position if valid else 0
    i = int(indices[j])
    return {
        "image": eval_view(source(i), pp),
        "label": np.int32(labels[j]),
        "group": np.int32(groups[j]),
        "valid": np.float32(valid),
        "index": np.int32(i),
    }

  ds = grain.MapDataset.source(pos).map(load).batch(local, drop_remainder=False)
  yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * max(local, 1)))


def preprocess_from_config(cfg) -> Preprocess:
  d = cfg.data
  return Preprocess(image_size=int(d.image_size), resize=d.get("resize") or None,
                    center_crop=d.get("center_crop") or None, scale=tuple(d.get("crop_scale", (0.7, 1.0))),
                    flip=float(d.get("flip", 0.5)), augment=bool(d.get("augment", True)))


def make_sources(cfg, table) -> dict:
  """The image sources ({"train", "eval"}) of `table` with the config's preprocessing (and cache)."""
  pp = preprocess_from_config(cfg)
  cache = bool(cfg.data.get("cache", False))
  src = ImageSource(table, pp, cache=cache)
  return {"train": src, "eval": src}
