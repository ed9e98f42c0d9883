"""The Stable Diffusion 1.x / 2.x conditional UNet in Flax (NHWC), built from a diffusers config.

`UNet2DConditionModel(config)` takes the dict of a diffusers `unet/config.json`;
`unet_from_diffusers` / `unet_to_diffusers` convert its weights. Submodules are named
after diffusers' attributes so `spurjax.diffusion.convert` maps every param to a torch key.

Cross-attention probabilities can be captured for attention-map segmentation:
build the model with `capture_cross_attention=True` and call
`apply(..., mutable=["intermediates"])`; every cross-attention layer then sows
`intermediates/.../attn2/cross_attn` = (probs (B, heads, H*W, L),).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion import convert
from spurjax.models.conv import Conv
from spurjax.diffusion.attention import Transformer2DModel
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


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding (B, dim) in float32, as diffusers' `get_timestep_embedding`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
  """Nearest-neighbour resize of NHWC `x` by 2, or to `size` (torch's 'nearest' indexing)."""
  b, h, w, c = x.shape
  if size is None or tuple(size) == (2 * h, 2 * w):
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
  rows = np.floor(np.arange(size[0]) * (h / size[0])).astype(np.int32)
  cols = np.floor(np.arange(size[1]) * (w / size[1])).astype(np.int32)
  return x[:, rows][:, :, cols]


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv twice with a projected time embedding and a (1x1) shortcut."""
  out_channels: int
  groups: int
  eps: float
  output_scale_factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    norm = lambda name: nn.GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, use_fast_variance=False,
                                     name=name)
    conv = lambda name: Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)
    h = conv("conv1")(nn.silu(norm("norm1")(x)))
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
    h = conv("conv2")(nn.silu(norm("norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="conv_shortcut")(x)
    out = x + h
    return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample2D(nn.Module):
  """3x3 conv with stride 2 and padding 1."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   name="conv")(x)


class Upsample2D(nn.Module):
  """Nearest x2 (or to `size`) then a 3x3 conv."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    x = upsample_nearest(x, size)
    return Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="conv")(x)


class TimestepEmbedding(nn.Module):
  """Dense-SiLU-Dense on the sinusoidal timestep features."""
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    t = nn.silu(nn.Dense(self.dim, dtype=self.dtype, name="linear_1")(t))
    return nn.Dense(self.dim, dtype=self.dtype, name="linear_2")(t)


def _resnet(spec: UNetSpec, name: str, channels: int, dtype, scale: float = 1.0) -> ResnetBlock2D:
  return ResnetBlock2D(channels, spec.norm_num_groups, spec.norm_eps, scale, dtype=dtype, name=name)


def _transformer(spec: UNetSpec, name: str, channels: int, heads: int, layers: int, dtype, capture: bool,
                 implementation: str | None) -> Transformer2DModel:
  return Transformer2DModel(heads, channels // heads, norm_num_groups=spec.norm_num_groups,
                            use_linear_projection=spec.use_linear_projection, num_layers=layers, dtype=dtype,
                            capture_cross_attention=capture, implementation=implementation, name=name)


class DownBlock(nn.Module):
  """CrossAttnDownBlock2D or DownBlock2D: resnets (+ transformers), then a stride-2 conv."""
  spec: UNetSpec
  index: int
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, temb, context):
    s, i = self.spec, self.index
    channels = s.block_out_channels[i]
    cross = s.down_block_types[i] == "CrossAttnDownBlock2D"
    skips = []
    for j in range(s.layers_per_block[i]):
      x = _resnet(s, f"resnets_{j}", channels, self.dtype)(x, temb)
      if cross:
        x = _transformer(s, f"attentions_{j}", channels, s.heads[i], s.transformer_layers[i], self.dtype,
                         self.capture_cross_attention, self.implementation)(x, context)
      skips.append(x)
    if i < len(s.block_out_channels) - 1:
      x = Downsample2D(channels, dtype=self.dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet)."""
  spec: UNetSpec
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, temb, context):
    s = self.spec
    channels = s.block_out_channels[-1]
    scale = s.mid_block_scale_factor
    x = _resnet(s, "resnets_0", channels, self.dtype, scale)(x, temb)
    x = _transformer(s, "attentions_0", channels, s.heads[-1], s.transformer_layers[-1], self.dtype,
                     self.capture_cross_attention, self.implementation)(x, context)
    return _resnet(s, "resnets_1", channels, self.dtype, scale)(x, temb)


class UpBlock(nn.Module):
  """CrossAttnUpBlock2D or UpBlock2D: (concat skip, resnet (+ transformer)) x n, then upsample."""
  spec: UNetSpec
  index: int
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, skips, temb, context, upsample_size=None):
    s, i = self.spec, self.index
    n = len(s.block_out_channels)
    channels = s.block_out_channels[n - 1 - i]
    heads = s.heads[n - 1 - i]
    layers = s.transformer_layers[n - 1 - i]
    cross = s.up_block_types[i] == "CrossAttnUpBlock2D"
    for j, skip in enumerate(reversed(skips)):
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = _resnet(s, f"resnets_{j}", channels, self.dtype)(x, temb)
      if cross:
        x = _transformer(s, f"attentions_{j}", channels, heads, layers, self.dtype, self.capture_cross_attention,
                         self.implementation)(x, context)
    if i < n - 1:
      x = Upsample2D(channels, dtype=self.dtype, name="upsamplers_0")(x, upsample_size)
    return x


class AttentionPooling(nn.Module):
  """One query, the tokens' mean plus a learned position, attending over [that query, tokens] (diffusers')."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, _, width = x.shape
    d = width // self.heads
    pos = self.param("positional_embedding", lambda k, s: jax.random.normal(k, s) / math.sqrt(width), (1, width))
    cls = jnp.mean(x, axis=1, keepdims=True) + pos.astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1)
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
    split = lambda y: y.reshape(b, -1, self.heads, d)
    scale = 1.0 / math.sqrt(math.sqrt(d))
    q, k, v = split(dense("q_proj")(cls)) * scale, split(dense("k_proj")(x)) * scale, split(dense("v_proj")(x))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, width)


class TextTimeEmbedding(nn.Module):
  """diffusers' TextTimeEmbedding: LayerNorm, attention pooling, Linear to the time width, LayerNorm."""
  time_embed_dim: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array) -> jax.Array:
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(context)
    h = AttentionPooling(self.heads, dtype=self.dtype, name="pool")(h)
    h = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="proj")(h)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(h)


class UNet2DConditionModel(nn.Module):
  """The SD conditional UNet. Params are float32; activations run in `dtype`.

  Call: `apply({"params": p}, sample, timesteps, encoder_hidden_states)` with `sample`
  NHWC (B, H, W, in_channels), `timesteps` a scalar or (B,), `encoder_hidden_states`
  (B, L, cross_attention_dim). Returns float32 NHWC (B, H, W, out_channels).

  Attributes:
    config: the diffusers `unet/config.json` dict.
    dtype: activation dtype (e.g. jnp.bfloat16).
    capture_cross_attention: sow cross-attention probabilities as intermediates.
    attention_implementation: None (pick per platform/dtype), "xla" or "cudnn".
  """
  config: Mapping[str, Any]
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  attention_implementation: str | None = None

  def __post_init__(self):
    parse_config(self.config)  # fail early, naming the bad key
    super().__post_init__()

  @property
  def spec(self) -> UNetSpec:
    return parse_config(self.config)

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps, encoder_hidden_states: jax.Array) -> jax.Array:
    s = self.spec
    n = len(s.block_out_channels)
    b, height, width, _ = sample.shape
    kw = dict(dtype=self.dtype, capture_cross_attention=self.capture_cross_attention,
              implementation=self.attention_implementation)
    x = sample.astype(self.dtype)
    if s.center_input_sample:
      x = 2 * x - 1.0
    context = encoder_hidden_states.astype(self.dtype)

    t = jnp.broadcast_to(jnp.asarray(timesteps).reshape(-1), (b,))
    t_emb = timestep_embedding(t, s.block_out_channels[0], s.flip_sin_to_cos, s.freq_shift).astype(self.dtype)
    temb = TimestepEmbedding(s.time_embed_dim, dtype=self.dtype, name="time_embedding")(t_emb)
    if s.text_time_heads:
      temb = temb + TextTimeEmbedding(s.time_embed_dim, s.text_time_heads, dtype=self.dtype,
                                      name="add_embedding")(context)

    pad = (s.conv_in_kernel - 1) // 2
    x = Conv(s.block_out_channels[0], (s.conv_in_kernel,) * 2, padding=((pad, pad), (pad, pad)),
                dtype=self.dtype, name="conv_in")(x)
    skips = [x]
    for i in range(n):
      x, res = DownBlock(s, i, name=f"down_blocks_{i}", **kw)(x, temb, context)
      skips += res
    x = MidBlock(s, name="mid_block", **kw)(x, temb, context)

    up_factor = 2 ** (n - 1)
    forward_size = height % up_factor != 0 or width % up_factor != 0
    for i in range(n):
      count = s.layers_per_block[n - 1 - i] + 1
      res, skips = skips[-count:], skips[:-count]
      size = tuple(skips[-1].shape[1:3]) if (forward_size and i < n - 1) else None
      x = UpBlock(s, i, name=f"up_blocks_{i}", **kw)(x, res, temb, context, size)

    x = nn.GroupNorm(s.norm_num_groups, epsilon=s.norm_eps, dtype=self.dtype, use_fast_variance=False,
                     name="conv_norm_out")(x)
    pad = (s.conv_out_kernel - 1) // 2
    x = Conv(s.out_channels, (s.conv_out_kernel,) * 2, padding=((pad, pad), (pad, pad)), dtype=self.dtype,
                name="conv_out")(nn.silu(x))
    return x.astype(jnp.float32)


def _dummy_inputs(spec: UNetSpec, sample_size: int | None):
  size = sample_size or 2 ** (len(spec.block_out_channels) - 1)
  sample = jnp.zeros((1, size, size, spec.in_channels), jnp.float32)
  context = jnp.zeros((1, 1, spec.cross_attention_dim[0]), jnp.float32)
  return sample, jnp.zeros((1,), jnp.int32), context


def init_unet_params(config: Mapping[str, Any], rng: jax.Array, sample_size: int | None = None):
  """Random float32 params for `config` (for tests and benchmarks; real runs load weights).

  Kernels are normal with std 1/sqrt(fan_in), norm scales one, biases zero. They are
  drawn on the host from a seed taken from `rng`, which is much faster than
  compiling flax's per-layer initialisers for a full-size UNet.
  """
  if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  gen = np.random.default_rng(np.asarray(rng).astype(np.uint32).ravel().tolist())

  def draw(path, ref):
    leaf = path[-1].key
    if leaf == "kernel":
      fan_in = int(np.prod(ref.shape[:-1]))
      return jnp.asarray(gen.standard_normal(ref.shape, np.float32) / np.float32(np.sqrt(fan_in)))
    return jnp.ones(ref.shape, ref.dtype) if leaf == "scale" else jnp.zeros(ref.shape, ref.dtype)

  return jax.tree_util.tree_map_with_path(draw, unet_param_shapes(config, sample_size))


def unet_param_shapes(config: Mapping[str, Any], sample_size: int | None = None):
  """The param tree of `config` as ShapeDtypeStructs (no compute, no memory)."""
  spec = parse_config(config)
  model = UNet2DConditionModel(config)
  variables = jax.eval_shape(model.init, jax.random.key(0), *_dummy_inputs(spec, sample_size))
  return variables["params"]


def unet_from_diffusers(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], what: str = "unet"):
  """Flax params from a diffusers UNet state dict (torch key -> array).

  Raises:
    SpurjaxError naming the config key, or the missing / mis-shaped tensor.
  """
  return convert.from_torch(tensors, unet_param_shapes(config), what=what)


def unet_to_diffusers(params, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A diffusers-layout state dict (numpy) from flax params."""
  parse_config(config)
  return convert.to_torch(params)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


__all__: Sequence[str] = (
    "UNet2DConditionModel", "UNetSpec", "parse_config", "init_unet_params", "unet_param_shapes",
    "unet_from_diffusers", "unet_to_diffusers", "timestep_embedding", "upsample_nearest", "count_params",
)
