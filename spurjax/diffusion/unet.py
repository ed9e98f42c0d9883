"""The Stable Diffusion 1.x / 2.x conditional UNet in Flax (NHWC), built from a diffusers config.

`UNet2DConditionModel(config)` takes the dict of a diffusers `unet/config.json` (validated by
`spurjax.diffusion.unet_config.parse_config`; its blocks are in `spurjax.diffusion.unet_blocks`);
`unet_from_diffusers` / `unet_to_diffusers` convert its weights. Submodules are named
after diffusers' attributes so `spurjax.diffusion.convert` maps every param to a torch key.

Cross-attention probabilities can be captured for attention-map segmentation:
build the model with `capture_cross_attention=True` and call
`apply(..., mutable=["intermediates"])`; every cross-attention layer then sows
`intermediates/.../attn2/cross_attn` = (probs (B, heads, H*W, L),).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion import convert
from spurjax.diffusion.unet_blocks import (DownBlock, MidBlock, TextTimeEmbedding, TimestepEmbedding, UpBlock,
                                           timestep_embedding)
from spurjax.diffusion.unet_config import UNetSpec, parse_config
from spurjax.models.conv import Conv


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
    "UNet2DConditionModel", "init_unet_params", "unet_param_shapes", "unet_from_diffusers", "unet_to_diffusers",
    "count_params",
)
