"""What a diffusers model directory is, checked from its JSON files alone (no weights read), so a
wrong `diffusion.path` fails before any stage computes."""
from __future__ import annotations

import json
import os

from spurjax.errors import SpurjaxError


def _read_json(path: str, key: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError:
    raise SpurjaxError(f"config {key}: {os.path.dirname(path)} is not a diffusers model directory "
                       f"(no {what})") from None
  except json.JSONDecodeError as e:
    raise SpurjaxError(f"config {key}: {path}: not valid JSON ({e})") from None


def unet_config(path: str, key: str = "diffusion.path") -> dict:
  """The UNet's config.json of the diffusers directory `path`; a one-line SpurjaxError naming `key`
  when `path` has no `model_index.json` or no `unet/config.json`."""
  _read_json(os.path.join(path, "model_index.json"), key, "model_index.json")
  return _read_json(os.path.join(path, "unet", "config.json"), key, "unet/config.json")


def unet_channels(path: str, key: str = "diffusion.path") -> tuple[int, int]:
  """(input channels, output channels) of the UNet in the diffusers directory `path`."""
  cfg = unet_config(path, key)
  return int(cfg.get("in_channels", 4)), int(cfg.get("out_channels", 4))
