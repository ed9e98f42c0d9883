"""Datasets prepared by TensorFlow Datasets, read by random access without TensorFlow.

The dataset must be prepared in `data_dir` with `file_format="array_record"` (or
parquet); `tfds.data_source` then decodes examples with numpy/PIL. Table refs are
global integer indices: the splits are laid end to end in the order train, val,
test, and `read_image(ref)` finds the split and the index inside it.

Feature keys may be nested with "/" (e.g. `attributes/Male` for `celeb_a`); label
and attribute values may be ints or bools.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from spurjax.data.table import SPLIT_IDS, Table
from spurjax.errors import SpurjaxError

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_BATCH = 512


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SpurjaxError("reading tfds datasets needs the tensorflow-datasets package") from None
  return tfds


def _get(tree: Any, key: str, where: str) -> Any:
  node = tree
  for part in key.split("/"):
    try:
      node = node[part]
    except (KeyError, TypeError, IndexError):
      have = ", ".join(sorted(tree.keys())) if isinstance(tree, Mapping) else "?"
      raise SpurjaxError(f"{where}: no feature '{key}' (top-level features: {have})") from None
  return node


def _skip(keys: list[str]) -> dict:
  """tfds decoders that leave the features at `keys` undecoded (bytes)."""
  tfds = _tfds()
  out: dict = {}
  for key in keys:
    parts = key.split("/")
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = tfds.decode.SkipDecoding()
  return out


class _Reader:
  """Picklable ref -> feature value reader over the per-split data sources."""

  def __init__(self, name: str, data_dir: str, splits: list[str], offsets: np.ndarray, key: str,
               skip: list[str], kind: str):
    self.name, self.data_dir, self.splits, self.offsets = name, data_dir, splits, offsets
    self.key, self.skip, self.kind = key, skip, kind
    self._sources: dict = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_sources"] = {}
    return state

  def _source(self, k: int):
    if k not in self._sources:
      tfds = _tfds()
      builder = tfds.builder(self.name, data_dir=self.data_dir)
      self._sources[k] = builder.as_data_source(split=self.splits[k], decoders=_skip(self.skip) or None)
    return self._sources[k]

  def __call__(self, ref) -> np.ndarray:
    ref = int(ref)
    if not 0 <= ref < self.offsets[-1]:
      raise SpurjaxError(f"tfds {self.name}: index {ref} out of range [0, {self.offsets[-1]})")
    k = int(np.searchsorted(self.offsets, ref, side="right")) - 1
    example = self._source(k)[ref - int(self.offsets[k])]
    value = np.asarray(_get(example, self.key, f"tfds {self.name} {self.splits[k]}"))
    where = f"tfds {self.name} {self.splits[k]}[{ref - int(self.offsets[k])}] '{self.key}'"
    return _as_image(value, where) if self.kind == "image" else _as_mask(value, where)


def _as_image(a: np.ndarray, where: str) -> np.ndarray:
  if a.dtype != np.uint8:
    raise SpurjaxError(f"{where}: image dtype {a.dtype}, expected uint8")
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise SpurjaxError(f"{where}: image shape {a.shape}, expected HxWx(1|3|4)")
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return np.ascontiguousarray(a[..., :3])


def _as_mask(a: np.ndarray, where: str) -> np.ndarray:
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2:
    raise SpurjaxError(f"{where}: mask shape {a.shape}, expected HxW or HxWx1")
  return a > 0


def _feature(features, key: str, where: str):
  node = features
  for part in key.split("/"):
    try:
      node = node[part]
    except (KeyError, TypeError):
      have = ", ".join(sorted(features.keys()))
      raise SpurjaxError(f"{where}: no feature '{key}' (top-level features: {have})") from None
  return node


def _labels(sources: list, key: str, where: str) -> np.ndarray:
  out = []
  for src, split in sources:
    n = len(src)
    for start in range(0, n, _BATCH):
      for i, ex in enumerate(src.__getitems__(list(range(start, min(n, start + _BATCH))))):
        v = np.asarray(_get(ex, key, where))
        if v.ndim != 0 or not (np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_):
          raise SpurjaxError(f"{where}: {split}[{start + i}] '{key}' = {v!r} is not an integer or bool scalar")
        out.append(int(v))
  return np.asarray(out, np.int64)


def _num_values(feature, values: np.ndarray, key: str, where: str) -> tuple[int, Optional[list]]:
  if values.size and values.min() < 0:
    raise SpurjaxError(f"{where}: feature '{key}' has negative value {int(values.min())}")
  n = getattr(feature, "num_classes", None)
  names = list(feature.names) if n else None
  if n is None:
    n = int(values.max()) + 1 if values.size else 1
    if getattr(feature, "np_dtype", None) == np.bool_:
      n = 2
  if values.size and values.max() >= n:
    raise SpurjaxError(f"{where}: feature '{key}' has value {int(values.max())} >= its {n} classes")
  return max(n, 1), names


def read_tfds(name: str, *, data_dir: str, image_key: str = "image", label_key: str = "label",
              attribute_key: Optional[str] = "place", split_map: Optional[Mapping[str, str]] = None,
              mask_key: Optional[str] = None) -> Table:
  """Reads a tfds dataset prepared (array_record) in `data_dir` into a `Table`.

  Args:
    name: tfds name, optionally with config/version ("celeb_a", "my_ds:1.0.0").
    data_dir: the tfds data folder holding the prepared dataset.
    image_key / label_key: features holding the image and the class.
    attribute_key: feature holding the spurious attribute; None: one place for all.
    split_map: our split ("train", "val", "test") -> tfds split (slices such as
      "train[:90%]" allowed). Default: train, validation and test, where present.
    mask_key: optional feature holding an object mask.
  """
  tfds = _tfds()
  where = f"tfds {name} in {data_dir}"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown / unreadable datasets
    raise SpurjaxError(f"{where}: cannot open the dataset ({type(e).__name__}: {str(e).splitlines()[0]})") from None
  if not builder.is_prepared():
    raise SpurjaxError(f"{where}: the dataset is not prepared there (run download_and_prepare with "
                       f"file_format='array_record' first)")
  available = set(builder.info.splits.keys())
  if split_map is None:
    split_map = {k: v for k, v in DEFAULT_SPLITS.items() if v in available}
    if "train" not in split_map:
      raise SpurjaxError(f"{where}: no 'train' split (have: {', '.join(sorted(available))}); pass split_map")
  for ours, theirs in split_map.items():
    if ours not in SPLIT_IDS:
      raise SpurjaxError(f"{where}: split_map key '{ours}' is not one of train, val, test")
    if str(theirs).split("[")[0] not in available:
      raise SpurjaxError(f"{where}: split '{theirs}' not found (have: {', '.join(sorted(available))})")
  features = builder.info.features
  _feature(features, image_key, where)
  label_feature = _feature(features, label_key, where)
  attr_feature = _feature(features, attribute_key, where) if attribute_key else None
  if mask_key:
    _feature(features, mask_key, where)

  order = [s for s in ("train", "val", "test") if s in split_map]
  big = [image_key] + ([mask_key] if mask_key else [])
  sources = []
  for s in order:
    try:
      src = builder.as_data_source(split=split_map[s], decoders=_skip(big))
    except (NotImplementedError, ValueError) as e:
      raise SpurjaxError(f"{where}: no random access to split '{split_map[s]}' "
                         f"({str(e).splitlines()[0]}); prepare it with file_format='array_record'") from None
    sources.append((src, split_map[s]))
  y = _labels(sources, label_key, where)
  place = _labels(sources, attribute_key, where) if attribute_key else np.zeros_like(y)
  num_classes, class_names = _num_values(label_feature, y, label_key, where)
  if attribute_key:
    num_places, place_names = _num_values(attr_feature, place, attribute_key, where)
  else:
    num_places, place_names = 1, None
  sizes = [len(src) for src, _ in sources]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  split = np.concatenate([np.full(n, SPLIT_IDS[s], np.int32) for s, n in zip(order, sizes)])
  splits = [split_map[s] for s in order]
  refs = np.arange(int(offsets[-1]), dtype=np.int64)
  read_image = _Reader(name, data_dir, splits, offsets, image_key, [mask_key] if mask_key else [], "image")
  read_mask = _Reader(name, data_dir, splits, offsets, mask_key, [image_key], "mask") if mask_key else None
  return Table(
      name=name, refs=refs, y=y.astype(np.int32), place=place.astype(np.int32), split=split,
      num_classes=num_classes, num_places=num_places, read_image=read_image,
      mask_refs=refs if mask_key else None, read_mask=read_mask,
      class_names=class_names, place_names=place_names)
