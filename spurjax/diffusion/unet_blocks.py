"""The building blocks of the SD conditional UNet (`spurjax.diffusion.unet`), named after diffusers'
modules: timestep features and embedding, resnet blocks, down / mid / up blocks with their
cross-attention transformers, up- and downsampling, and the text-time embedding."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion.attention import Transformer2DModel
from spurjax.diffusion.unet_config import UNetSpec
from spurjax.models.conv import Conv


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
