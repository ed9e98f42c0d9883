"""Backbone weights files: the .npz that `spurjax pretrain` writes and `model.init_from` reads.

One file holds the flat `{params, batch_stats}` leaves ("params/conv_0/kernel", ...) as float32
plus a JSON `__meta__` entry (model name, classes, provenance). `builtin` names the weights
spurjax ships, spurjax/assets/backbone/<model>.npz.
"""
from __future__ import annotations

import json
import os

import numpy as np

from spurjax.errors import SpurjaxError

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "backbone")
_META = "__meta__"


NO_WEIGHTS = ("", "none")   # model.pretrained: no torchvision weights ("none": on purpose, where a preset asks for them)
REQUIRED = "required"       # model.pretrained in a preset whose recipe starts from ImageNet weights


def pretrained_path(value) -> str:
  """The torchvision weights file `model.pretrained` names ("" for none)."""
  return "" if str(value) in NO_WEIGHTS + (REQUIRED,) else str(value)


def builtin_path(model_name: str) -> str:
  """The shipped weights file of `model_name` (which may not exist)."""
  return os.path.join(ASSETS, f"{model_name}.npz")


def resolve(spec: str, model_name: str) -> str:
  """`builtin` -> the shipped weights for `model_name`; anything else is a file path."""
  path = builtin_path(model_name) if spec == "builtin" else spec
  if not os.path.isfile(path):
    if spec == "builtin":
      raise SpurjaxError(f"model.init_from=builtin: spurjax ships no pretrained weights for model "
                         f"'{model_name}' (have: {', '.join(available()) or 'none'})")
    raise SpurjaxError(f"model.init_from: weights file not found: {path}")
  return path


def available() -> list[str]:
  """Model names spurjax ships backbone weights for."""
  if not os.path.isdir(ASSETS):
    return []
  return sorted(f[:-4] for f in os.listdir(ASSETS) if f.endswith(".npz"))


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out["/".join(prefix + (str(k),))] = np.asarray(v)
  return out


def save_weights(path: str, variables, meta: dict) -> None:
  """Writes `variables` ({params, batch_stats}) and a JSON `meta` dict to an .npz, atomically."""
  flat = _flatten({k: variables[k] for k in ("params", "batch_stats") if k in variables})
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  flat[_META] = np.asarray(json.dumps(meta))
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load_weights(path: str) -> tuple[dict, dict]:
  """(flat {"params/conv_0/kernel": array, ...}, meta) from a file `save_weights` wrote."""
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: np.asarray(z[k]) for k in z.files}
  except (OSError, ValueError) as e:
    raise SpurjaxError(f"{path}: not a spurjax weights file ({e})") from None
  if _META not in flat:
    raise SpurjaxError(f"{path}: not a spurjax weights file (no {_META} entry)")
  meta = json.loads(str(flat.pop(_META)))
  return flat, meta


def apply_weights(path: str, model_name: str, init_variables) -> dict:
  """`init_variables` with every leaf replaced by the file's; the fc head is kept from
  `init_variables` when the class counts differ. Raises SpurjaxError on any other mismatch."""
  flat, meta = load_weights(path)
  if meta.get("model") not in (None, model_name):
    raise SpurjaxError(f"{path}: weights are for model '{meta.get('model')}', the config's model is '{model_name}'")
  template = _flatten({k: init_variables[k] for k in ("params", "batch_stats") if k in init_variables})
  missing = sorted(set(template) - set(flat))
  extra = sorted(set(flat) - set(template))
  if missing or extra:
    raise SpurjaxError(f"{path}: does not fit model '{model_name}' (missing {missing[:3]}, unexpected {extra[:3]})")
  out = {}
  for key, like in template.items():
    got = flat[key]
    if got.shape != like.shape:
      if key.startswith("params/fc/"):  # a different number of classes: keep the fresh head
        got = like
      else:
        raise SpurjaxError(f"{path}: {key} has shape {got.shape}, model '{model_name}' needs {like.shape}")
    out[key] = np.asarray(got, like.dtype)
  tree: dict = {}
  for key, v in out.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree
