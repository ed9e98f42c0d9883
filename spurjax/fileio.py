"""Small file helpers shared by every module: JSON written atomically."""
from __future__ import annotations

import json
import os

import numpy as np


def _json_default(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f"value of type {type(x).__name__} is not JSON serialisable")


def write_json_atomic(path, obj, *, indent: int = 1, sort_keys: bool = False, newline: bool = False) -> None:
  """Writes `obj` as JSON to `path` through `path.part` and a rename: a reader never sees half a file."""
  path = os.fspath(path)
  tmp = path + ".part"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=_json_default)
    if newline:
      f.write("\n")
  os.replace(tmp, path)
