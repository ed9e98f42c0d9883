"""safetensors files as numpy arrays, without torch: the one reader and writer of every weights file.

`read` goes through `safetensors.numpy`. Releases of that package that cannot name bfloat16 in
numpy raise TypeError on such a file; it is then parsed here (bfloat16 as `ml_dtypes.bfloat16`),
so every release the requirements allow returns the same arrays.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np

from spurjax.errors import SpurjaxError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read(path) -> dict[str, np.ndarray]:
  """Every tensor of the file at `path`, in the file's dtype (bfloat16 as `ml_dtypes.bfloat16`).

  The arrays may be read-only views of the file's bytes; copy them where they must own memory.
  Raises SpurjaxError naming the file when it is missing or cannot be parsed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: safetensors file not found")
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except TypeError:  # a dtype this release of safetensors cannot name in numpy (bfloat16)
    return _read_raw(path)
  except Exception as e:  # corrupt headers surface as several exception types
    raise SpurjaxError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})") from None


def _read_raw(path: str) -> dict[str, np.ndarray]:
  """The file parsed here: an 8-byte little-endian header length, a JSON header, the tensor bytes."""
  import ml_dtypes
  dtypes = {**_DTYPES, "BF16": ml_dtypes.bfloat16}
  with open(path, "rb") as f:
    blob = f.read()
  try:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    body = memoryview(blob)[8 + n:]
    out = {}
    for key, info in header.items():
      if key == "__metadata__":
        continue
      if info["dtype"] not in dtypes:
        raise ValueError(f"tensor {key!r} has unsupported dtype {info['dtype']}")
      dtype = np.dtype(dtypes[info["dtype"]])
      begin, end = info["data_offsets"]
      shape = tuple(int(s) for s in info["shape"])
      if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"tensor {key!r} has bad data offsets {info['data_offsets']}")
      a = np.frombuffer(body[begin:end], dtype.newbyteorder("<")).reshape(shape)
      out[key] = a.astype(dtype.newbyteorder("="))
    return out
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise SpurjaxError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})") from None


def write(tensors: Mapping[str, np.ndarray], path, metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes `tensors` (C-ordered copies where needed) to `path`, with an optional text `metadata` header."""
  from safetensors.numpy import save_file
  save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, os.fspath(path),
            metadata=None if metadata is None else dict(metadata))
