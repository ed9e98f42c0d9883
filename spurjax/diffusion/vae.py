"""Flax AutoencoderKL (the Stable Diffusion VAE), NHWC, matching diffusers' layout.

Submodule names mirror diffusers' attribute names so `spurjax.diffusion.convert`
maps every flax param to its torch key (`encoder.down_blocks.0.resnets.1.conv1.weight`).
Images are NHWC in [-1, 1]; latents are NHWC with `latent_channels` channels and are
*unscaled* (multiply by `config["scaling_factor"]` before the UNet).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spurjax.diffusion import convert
from spurjax.errors import SpurjaxError
from spurjax.models.conv import Conv

_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
_EPS = 1e-6
# Older diffusers checkpoints name the mid-block attention projections differently.
_OLD_ATTN_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def vae_config(config: Mapping[str, Any], what: str = "vae/config.json") -> dict:
  """Validates a diffusers AutoencoderKL config and fills in diffusers' defaults.

  Raises:
    SpurjaxError naming the key whose value is not supported.
  """
  if not isinstance(config, Mapping):
    raise SpurjaxError(f"{what}: expected a JSON object, got {type(config).__name__}")
  cfg = {**_DEFAULTS, **dict(config)}
  cls = cfg.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise SpurjaxError(f"{what}: _class_name={cls!r} is not supported (only AutoencoderKL)")
  boc = cfg["block_out_channels"]
  if not isinstance(boc, (list, tuple)) or not boc or not all(isinstance(c, int) and c > 0 for c in boc):
    raise SpurjaxError(f"{what}: block_out_channels={boc!r} must be a non-empty list of positive ints")
  cfg["block_out_channels"] = list(boc)
  for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
    if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
      raise SpurjaxError(f"{what}: {key}={cfg[key]!r} must be a positive int")
  for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    types = cfg[key]
    if not isinstance(types, (list, tuple)) or len(types) != len(boc):
      raise SpurjaxError(f"{what}: {key}={types!r} must list one block per block_out_channels entry ({len(boc)})")
    bad = [t for t in types if t != want]
    if bad:
      raise SpurjaxError(f"{what}: {key} entry {bad[0]!r} is not supported (only {want})")
    cfg[key] = list(types)
  if cfg["act_fn"] not in ("silu", "swish"):
    raise SpurjaxError(f"{what}: act_fn={cfg['act_fn']!r} is not supported (only silu)")
  groups = cfg["norm_num_groups"]
  bad_c = [c for c in boc if c % groups]
  if bad_c:
    raise SpurjaxError(f"{what}: norm_num_groups={groups} does not divide block_out_channels entry {bad_c[0]}")
  if cfg.get("shift_factor") is not None:
    raise SpurjaxError(f"{what}: shift_factor={cfg['shift_factor']!r} is not supported (only null)")
  if cfg.get("norm_type", "group") != "group":
    raise SpurjaxError(f"{what}: norm_type={cfg['norm_type']!r} is not supported (only group)")
  for key in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
    if not isinstance(cfg[key], bool):
      raise SpurjaxError(f"{what}: {key}={cfg[key]!r} must be true or false")
  if not isinstance(cfg["scaling_factor"], (int, float)) or isinstance(cfg["scaling_factor"], bool):
    raise SpurjaxError(f"{what}: scaling_factor={cfg['scaling_factor']!r} must be a number")
  return cfg


def _conv(features: int, kernel: int, name: str, dtype, stride: int = 1, padding=None) -> Conv:
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def _group_norm(groups: int, name: str, dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=_EPS, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  """diffusers ResnetBlock2D without a time embedding (norm-act-conv twice, residual)."""
  out_channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(_group_norm(self.groups, "norm1", self.dtype)(x))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.silu(_group_norm(self.groups, "norm2", self.dtype)(h))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class SpatialSelfAttention(nn.Module):
  """The VAE mid-block attention: one head over all pixels, group norm, residual."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, c)
    dense = lambda name: nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    q, k, v = dense("to_q")(y), dense("to_k")(y), dense("to_v")(y)
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / np.sqrt(c)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", probs, v))
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """UNetMidBlock2D as used by the VAE: resnet, attention, resnet."""
  channels: int
  groups: int
  add_attention: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = SpatialSelfAttention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad right/bottom by one, then a stride-2 3x3 conv (diffusers Downsample2D, padding=0)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.channels, 3, "conv", self.dtype, stride=2, padding="VALID")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv (diffusers Upsample2D)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, "conv", self.dtype)(x)


class Block(nn.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: `num_layers` resnets and an optional resampler."""
  out_channels: int
  num_layers: int
  groups: int
  resample: str | None = None  # "down", "up" or None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.out_channels, self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.out_channels, self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  config: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    boc, groups = cfg["block_out_channels"], cfg["norm_num_groups"]
    x = _conv(boc[0], 3, "conv_in", self.dtype)(x.astype(self.dtype))
    for i, ch in enumerate(boc):
      last = i == len(boc) - 1
      x = Block(ch, cfg["layers_per_block"], groups, None if last else "down", self.dtype, name=f"down_blocks_{i}")(x)
    x = MidBlock(boc[-1], groups, cfg["mid_block_add_attention"], self.dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(groups, "conv_norm_out", self.dtype)(x))
    return _conv(2 * cfg["latent_channels"], 3, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  config: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    boc, groups = cfg["block_out_channels"], cfg["norm_num_groups"]
    x = _conv(boc[-1], 3, "conv_in", self.dtype)(z.astype(self.dtype))
    x = MidBlock(boc[-1], groups, cfg["mid_block_add_attention"], self.dtype, name="mid_block")(x)
    for i, ch in enumerate(reversed(boc)):
      last = i == len(boc) - 1
      x = Block(ch, cfg["layers_per_block"] + 1, groups, None if last else "up", self.dtype, name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(groups, "conv_norm_out", self.dtype)(x))
    return _conv(cfg["out_channels"], 3, "conv_out", self.dtype)(x)


class AutoencoderKL(nn.Module):
  """The KL autoencoder. `config` is the content of diffusers' `vae/config.json`.

  Use `apply(params, x, method="encode")` -> (mean, logvar) and
  `apply(params, z, method="decode")` -> image; `__call__` reconstructs from the mean.
  """
  config: dict
  dtype: Any = jnp.float32

  def __hash__(self):
    return hash((type(self).__name__, json.dumps(self.config, sort_keys=True, default=str), str(self.dtype)))

  def setup(self):
    cfg = vae_config(self.config)
    lc = cfg["latent_channels"]
    self.encoder = Encoder(cfg, self.dtype)
    self.decoder = Decoder(cfg, self.dtype)
    self.quant_conv = _conv(2 * lc, 1, "quant_conv", self.dtype) if cfg["use_quant_conv"] else None
    self.post_quant_conv = _conv(lc, 1, "post_quant_conv", self.dtype) if cfg["use_post_quant_conv"] else None

  def encode(self, x):
    """x: (B, H, W, in_channels) in [-1, 1] -> (mean, logvar), each (B, H/f, W/f, latent_channels), float32."""
    moments = self.encoder(x)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    """z: unscaled latents (B, h, w, latent_channels) -> image (B, h*f, w*f, out_channels), float32."""
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


def downscale_factor(config: Mapping[str, Any]) -> int:
  """Pixels per latent along each side (8 for Stable Diffusion)."""
  return 2 ** (len(vae_config(config)["block_out_channels"]) - 1)


def sample_latent(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A draw from the diagonal Gaussian posterior N(mean, exp(logvar))."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def _dummy_image(cfg: dict) -> jnp.ndarray:
  f = 2 ** (len(cfg["block_out_channels"]) - 1)
  return jnp.zeros((1, f, f, cfg["in_channels"]), jnp.float32)


def random_params(template, rng: jax.Array) -> dict:
  """Float32 params shaped like `template` (arrays or ShapeDtypeStructs), drawn from one random stream.

  Kernels ~ N(0, 1/fan_in) (LeCun normal), embeddings ~ N(0, 0.02^2), norm scales 1, biases 0.
  One draw for the whole tree keeps this fast to compile, unlike a per-layer `Module.init`.
  """
  flat = traverse_util.flatten_dict(template)
  sizes = {p: int(np.prod(t.shape)) for p, t in flat.items() if p[-1] in ("kernel", "embedding")}
  noise = np.asarray(jax.random.normal(rng, (max(1, sum(sizes.values())),), jnp.float32))
  out, start = {}, 0
  for path, t in flat.items():
    shape, leaf = tuple(t.shape), path[-1]
    if path in sizes:
      chunk = noise[start:start + sizes[path]].reshape(shape)
      start += sizes[path]
      std = 0.02 if leaf == "embedding" else 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1]))))
      out[path] = (chunk * std).astype(np.float32)
    elif leaf == "scale":
      out[path] = np.ones(shape, np.float32)
    else:
      out[path] = np.zeros(shape, np.float32)
  return traverse_util.unflatten_dict(out)


def init_vae_params(config: Mapping[str, Any], rng: jax.Array) -> dict:
  """Random float32 params for `AutoencoderKL(config)` (see `random_params`)."""
  return random_params(vae_param_shapes(config), rng)


def vae_param_shapes(config: Mapping[str, Any]) -> dict:
  """The param tree as ShapeDtypeStructs (no compute)."""
  cfg = vae_config(config)
  return jax.eval_shape(lambda: AutoencoderKL(cfg).init(jax.random.key(0), _dummy_image(cfg)))["params"]


def _old_name_map(template) -> dict[str, str]:
  out = {}
  for path in _flat_keys(template):
    key = convert.torch_key(path)
    for new, old in _OLD_ATTN_NAMES.items():
      marker = f".attentions.0.{new}."
      if marker in key:
        out[key] = key.replace(marker, f".attentions.0.{old}.")
  return out


def _flat_keys(tree) -> list[tuple[str, ...]]:
  return list(traverse_util.flatten_dict(tree).keys())


def vae_from_diffusers(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
                       what: str = "vae/diffusion_pytorch_model.safetensors") -> dict:
  """Flax params from a diffusers AutoencoderKL state dict (numpy arrays), checked by name and shape.

  Also reads older checkpoints whose mid-block attention uses query/key/value/proj_attn.
  Raises SpurjaxError naming a missing, mis-shaped or unexpected tensor.
  """
  template = vae_param_shapes(config)
  key_map = None
  if "encoder.mid_block.attentions.0.to_q.weight" not in tensors and \
     "encoder.mid_block.attentions.0.query.weight" in tensors:
    key_map = _old_name_map(template)
  params = convert.from_torch(tensors, template, what=what, key_map=key_map)
  used = {convert.torch_key(p) for p in _flat_keys(template)}
  if key_map:
    used = {key_map.get(k, k) for k in used}
  extra = sorted(k for k in tensors if k not in used)
  if extra:
    raise SpurjaxError(f"{what}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all); "
                       "does config.json match the weights?")
  return params


def vae_to_diffusers(params, config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """A diffusers AutoencoderKL state dict (float32 numpy) from flax params."""
  del config  # the layout is fully determined by the param names
  return convert.to_torch(params)
