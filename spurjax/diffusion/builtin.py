"""Where the diffusion model of a config lives: `diffusion.path` = a diffusers directory, or
`"builtin"` for the prior shipped with spurjax (`spurjax/assets/prior`)."""
from __future__ import annotations

import os
from pathlib import Path

from spurjax.errors import SpurjaxError


def builtin_prior_path() -> str:
  """The directory of the prior shipped with spurjax (`spurjax/assets/prior`)."""
  return str(Path(__file__).resolve().parents[1] / "assets" / "prior")


def resolve_diffusion_path(path: str, key: str = "diffusion.path") -> str:
  """`"builtin"` -> `builtin_prior_path()`; other paths unchanged. Empty or missing is a SpurjaxError
  naming the config `key`."""
  if not path:
    raise SpurjaxError(f"config {key}: no diffusion model given (a diffusers directory or 'builtin')")
  if path == "builtin":
    path = builtin_prior_path()
    if not os.path.isfile(os.path.join(path, "model_index.json")):
      raise SpurjaxError(f"{path}: the built-in prior is not installed (no model_index.json)")
  elif not os.path.isdir(path):
    raise SpurjaxError(f"config {key}: directory not found: {path}")
  return path
