"""Generic conversion between PyTorch-style state dicts and Flax param trees.

spurjax's Flax modules name their submodules after the diffusers / transformers
attribute names, with list entries written `name_i` (e.g. `down_blocks_0`). A flax
param path therefore maps to exactly one torch key:

  ("down_blocks_0", "resnets_1", "conv1", "kernel") <-> "down_blocks.0.resnets.1.conv1.weight"

Layouts: Linear kernels are transposed ((out, in) <-> (in, out)), conv kernels go
OIHW <-> HWIO, norm weights become `scale`, embedding tables `embedding`.
The conversion is driven by a template param tree (shapes only, e.g. from
`jax.eval_shape(model.init, ...)`), so every expected tensor is checked by name and shape.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import traverse_util

from spurjax.errors import SpurjaxError

# Attribute names that hold lists (nn.ModuleList / nn.Sequential) in the reference models.
LIST_NAMES = frozenset({
    "down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks", "downsamplers",
    "upsamplers", "layers", "net", "to_out",
})
_LIST_RE = re.compile(r"^(.*)_(\d+)$")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def torch_key(path: tuple[str, ...], prefix: str = "") -> str:
  """The torch state-dict key for a flax param path."""
  parts = []
  for seg in path[:-1]:
    m = _LIST_RE.match(seg)
    if m and m.group(1) in LIST_NAMES:
      parts += [m.group(1), m.group(2)]
    else:
      parts.append(seg)
  leaf = path[-1]
  parts.append(_LEAF_TO_TORCH.get(leaf, leaf))
  return prefix + ".".join(parts)


def _to_flax_layout(leaf: str, w: np.ndarray, want_ndim: int) -> np.ndarray:
  if leaf == "kernel":
    if w.ndim == 4 and want_ndim == 4:
      return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
    if w.ndim == 4 and want_ndim == 2:  # 1x1 conv stored where flax uses Dense
      return np.transpose(w[:, :, 0, 0], (1, 0))
    if w.ndim == 2 and want_ndim == 4:  # Dense stored where flax uses a 1x1 conv
      return np.transpose(w, (1, 0))[None, None]
    if w.ndim == 2:
      return np.transpose(w, (1, 0))
  return w


def _to_torch_layout(leaf: str, w: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    if w.ndim == 4:
      return np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW
    if w.ndim == 2:
      return np.transpose(w, (1, 0))
  return w


def from_torch(tensors: Mapping[str, np.ndarray], template, *, prefix: str = "", what: str = "model",
               dtype=np.float32, key_map: Mapping[str, str] | None = None):
  """Builds a flax param tree shaped like `template` from a torch-style state dict.

  Args:
    tensors: key -> array (numpy or anything np.asarray accepts).
    template: nested dict of arrays or ShapeDtypeStructs (the flax params).
    prefix: prepended to every torch key (e.g. "text_model.").
    what: name used in error messages (e.g. the file).
    key_map: optional overrides, flax-derived torch key -> actual torch key.
  Raises:
    SpurjaxError naming the missing or mis-shaped tensor.
  """
  flat = traverse_util.flatten_dict(template)
  out = {}
  for path, ref in flat.items():
    key = torch_key(path, prefix)
    if key_map:
      key = key_map.get(key, key)
    if key not in tensors:
      raise SpurjaxError(f"{what}: missing tensor '{key}'")
    w = _to_flax_layout(path[-1], np.asarray(tensors[key]), len(ref.shape))
    if tuple(w.shape) != tuple(ref.shape):
      raise SpurjaxError(f"{what}: tensor '{key}' has shape {tuple(np.asarray(tensors[key]).shape)}, "
                         f"expected one matching {tuple(ref.shape)}")
    out[path] = np.asarray(w, dtype=dtype)
  return traverse_util.unflatten_dict(out)


def to_torch(params, *, prefix: str = "", key_map: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
  """The inverse of `from_torch`: a flat torch-style state dict of numpy arrays."""
  out = {}
  for path, w in traverse_util.flatten_dict(params).items():
    key = torch_key(path, prefix)
    if key_map:
      key = key_map.get(key, key)
    out[key] = np.ascontiguousarray(_to_torch_layout(path[-1], np.asarray(w)))
  return out
