"""The UNet's diffusers config, validated: `parse_config` turns a `unet/config.json` dict into a
`UNetSpec` (per-block lists expanded) or raises a SpurjaxError naming the first unsupported key."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from spurjax.errors import SpurjaxError

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn",)

_DEFAULT_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_DEFAULT_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
# Keys that must keep these values (anything else changes the architecture).
_FIXED = {
    "center_input_sample": (False, True),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": (1,),
    "dual_cross_attention": (False,),
    "act_fn": ("silu", "swish"),
    "num_attention_heads": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "addition_embed_type": (None, "text"),
    "addition_time_embed_dim": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "mid_block_type": MID_TYPES,
}
# Keys read below, or without effect on the supported block types / at inference.
_HANDLED = frozenset({
    "in_channels", "out_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "up_block_types",
    "block_out_channels", "layers_per_block", "mid_block_scale_factor", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim", "use_linear_projection",
    "upcast_attention", "time_embedding_dim", "conv_in_kernel", "conv_out_kernel",
    "sample_size", "dropout", "resnet_skip_time_act", "resnet_out_scale_factor",
    "projection_class_embeddings_input_dim", "addition_embed_type_num_heads",
})


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """The architecture, with per-block lists expanded."""
  in_channels: int
  out_channels: int
  center_input_sample: bool
  flip_sin_to_cos: bool
  freq_shift: float
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  block_out_channels: tuple[int, ...]
  layers_per_block: tuple[int, ...]
  heads: tuple[int, ...]
  cross_attention_dim: tuple[int, ...]
  transformer_layers: tuple[int, ...]
  use_linear_projection: bool
  norm_num_groups: int
  norm_eps: float
  mid_block_scale_factor: float
  time_embed_dim: int
  conv_in_kernel: int
  conv_out_kernel: int
  text_time_heads: int = 0        # > 0: addition_embed_type "text" (pooled text added to the time embedding)


def _per_block(config: Mapping, key: str, default, n: int, kind=int) -> tuple:
  value = config.get(key, default)
  if value is None:
    raise SpurjaxError(f"unet config: '{key}' is null; a value is required")
  values = [value] * n if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
  if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise SpurjaxError(f"unet config: '{key}' = {value!r} must be a number or a list of {n} numbers")
  return tuple(kind(v) for v in values)


def _int(config: Mapping, key: str, default: int) -> int:
  value = config.get(key, default)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise SpurjaxError(f"unet config: '{key}' = {value!r} must be a positive integer")
  return value


def _strip_res(name: str) -> str:
  return name[len("UNetRes"):] if isinstance(name, str) and name.startswith("UNetRes") else name


def parse_config(config: Mapping[str, Any]) -> UNetSpec:
  """Validates a diffusers UNet2DConditionModel config dict.

  Raises:
    SpurjaxError naming the first unsupported key and value.
  """
  if not isinstance(config, Mapping):
    raise SpurjaxError(f"unet config must be a JSON object, got {type(config).__name__}")
  for key, value in config.items():
    if key.startswith("_"):
      continue
    if key in _FIXED:
      allowed = _FIXED[key]
      if isinstance(value, (list, tuple)) and key == "only_cross_attention":
        value_ok = all(v is False for v in value)
      else:
        value_ok = any(value == a and type(value) is type(a) for a in allowed)
      if not value_ok:
        raise SpurjaxError(f"unet config: unsupported value {key}={value!r} (supported: {list(allowed)})")
    elif key not in _HANDLED and value not in (None, False):
      raise SpurjaxError(f"unet config: unsupported key '{key}' = {value!r}")

  down = tuple(_strip_res(t) for t in config.get("down_block_types", _DEFAULT_DOWN))
  up = tuple(_strip_res(t) for t in config.get("up_block_types", _DEFAULT_UP))
  for key, types, allowed in (("down_block_types", down, DOWN_TYPES), ("up_block_types", up, UP_TYPES)):
    bad = [t for t in types if t not in allowed]
    if bad or not types:
      raise SpurjaxError(f"unet config: unsupported {key} {bad or list(types)} (supported: {list(allowed)})")
  channels = _per_block(config, "block_out_channels", (320, 640, 1280, 1280), len(down))
  n = len(channels)
  if n == 0 or len(down) != n or len(up) != n:
    raise SpurjaxError(f"unet config: block_out_channels {list(channels)}, down_block_types {list(down)} and "
                       f"up_block_types {list(up)} must have the same non-zero length")
  heads = _per_block(config, "attention_head_dim", 8, n)
  groups = config.get("norm_num_groups", 32)
  if not isinstance(groups, int) or isinstance(groups, bool):
    raise SpurjaxError(f"unet config: unsupported value norm_num_groups={groups!r} (an integer is required)")
  for i, c in enumerate(channels):
    if c % groups:
      raise SpurjaxError(f"unet config: block_out_channels[{i}]={c} is not divisible by norm_num_groups={groups}")
    uses_attention = down[i].startswith("CrossAttn") or up[n - 1 - i].startswith("CrossAttn") or i == n - 1
    if uses_attention and c % heads[i]:
      raise SpurjaxError(f"unet config: block_out_channels[{i}]={c} is not divisible by "
                         f"attention_head_dim[{i}]={heads[i]} (the number of heads)")
  cross_dims = _per_block(config, "cross_attention_dim", 1280, n)
  if len(set(cross_dims)) != 1:
    raise SpurjaxError(f"unet config: unsupported value cross_attention_dim={list(cross_dims)} "
                       "(one text embedding width is required)")
  for key in ("conv_in_kernel", "conv_out_kernel"):
    k = config.get(key, 3)
    if not isinstance(k, int) or k % 2 == 0:
      raise SpurjaxError(f"unet config: unsupported value {key}={k!r} (an odd integer is required)")
  time_embed_dim = config.get("time_embedding_dim") or channels[0] * 4
  return UNetSpec(
      in_channels=_int(config, "in_channels", 4),
      out_channels=_int(config, "out_channels", 4),
      center_input_sample=bool(config.get("center_input_sample", False)),
      flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
      freq_shift=float(config.get("freq_shift", 0)),
      down_block_types=down,
      up_block_types=up,
      block_out_channels=channels,
      layers_per_block=_per_block(config, "layers_per_block", 2, n),
      heads=heads,
      cross_attention_dim=cross_dims,
      transformer_layers=_per_block(config, "transformer_layers_per_block", 1, n),
      use_linear_projection=bool(config.get("use_linear_projection", False)),
      norm_num_groups=groups,
      norm_eps=float(config.get("norm_eps", 1e-5)),
      mid_block_scale_factor=float(config.get("mid_block_scale_factor", 1.0)),
      time_embed_dim=int(time_embed_dim),
      conv_in_kernel=int(config.get("conv_in_kernel", 3)),
      conv_out_kernel=int(config.get("conv_out_kernel", 3)),
      text_time_heads=_text_time_heads(config, cross_dims),
  )


def _text_time_heads(config: Mapping[str, Any], cross_dims: tuple[int, ...]) -> int:
  """Heads of the text-time embedding's attention pooling; 0 without addition_embed_type "text"."""
  if config.get("addition_embed_type") != "text":
    return 0
  heads = _int(config, "addition_embed_type_num_heads", 64)
  if len(set(cross_dims)) != 1 or cross_dims[0] % heads:
    raise SpurjaxError(f"unet config: addition_embed_type='text' needs one cross_attention_dim divisible by "
                       f"addition_embed_type_num_heads={heads} (got {list(cross_dims)})")
  return heads
