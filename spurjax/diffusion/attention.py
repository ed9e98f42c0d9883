"""Multi-head attention and the transformer blocks of the Stable Diffusion UNet.

Submodule names mirror diffusers' attribute names (`to_q`, `to_out_0`, `net_0.proj`,
`transformer_blocks_0`, ...) so `spurjax.diffusion.convert` maps them to torch keys.
Activations run in `dtype`; params are float32 or stored in `dtype` (`spurjax.diffusion.precision`).
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


from spurjax.models.conv import Conv
_HALF_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
_GPU_PLATFORMS = ("gpu", "cuda")
# cuDNN's fused (flash) attention handles head dims that are multiples of 8 up to
# 128 on every supported GPU (256 on Hopper and later; 128 is the safe bound).
_CUDNN_MAX_HEAD_DIM = 128
CPU_SCORES_BUDGET = 1 << 28   # bytes of float32 attention scores one CPU attention call materialises


def default_platform() -> str:
  """The platform of the default jax backend ("cpu", "gpu", "tpu")."""
  return jax.default_backend()


def select_implementation(dtype, head_dim: int, platform: str | None = None) -> str | None:
  """Which `jax.nn.dot_product_attention` implementation to use.

  "cudnn" (the fused kernel) for fp16/bf16 inputs on a CUDA GPU when the head dim
  allows it, "xla" for other inputs on a GPU, and None (jax's default) elsewhere.
  """
  platform = (platform or default_platform()).lower()
  if platform not in _GPU_PLATFORMS:
    return None
  if np.dtype(dtype) in _HALF_DTYPES and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM:
    return "cudnn"
  return "xla"


# A cuDNN fused-attention custom call, as compiled HLO text (custom_call_target="__cudnn$fmha...") or
# StableHLO text (stablehlo.custom_call @__cudnn$fmha..., or call_target_name = "__cudnn$fmha...") names it.
_FUSED_CALL = re.compile(r'(?:custom_call_target="|call_target_name\s*=\s*"|custom_call\s*@)__cudnn\$fmha')


def fused_attention_calls(program_text: str) -> int:
  """How many cuDNN fused-attention custom calls (targets `__cudnn$fmha...`, forward and backward) a
  program holds, from `jax.jit(f).lower(...).compile().as_text()` (or the lowered text): > 0 when a
  UNet's attention runs in the fused kernel, 0 where XLA's own ops compute it (CPU, float32)."""
  return len(_FUSED_CALL.findall(program_text))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None,
              platform: str | None = None) -> jax.Array:
  """Scaled dot-product attention on (B, T, H, D) queries and (B, S, H, D) keys/values.

  With `implementation=None` the kernel is picked by `select_implementation`
  (fused cuDNN for half precision on a GPU); "cudnn" or "xla" force one. If the
  fused kernel refuses the inputs at trace time, the XLA path is used instead.
  """
  if implementation is None:
    implementation = select_implementation(q.dtype, q.shape[-1], platform)
    if implementation is None and (platform or default_platform()).lower() == "cpu":
      return _heads_major_attention(q, k, v)
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):
      implementation = "xla"
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def _heads_major_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                           scores_budget: int | None = None) -> jax.Array:
  """Attention with heads moved next to batch before the two matmuls.

  On the CPU XLA runs (B, H)-batched matmuls over contiguous (T, D) blocks several
  times faster than the (B, T, H, D) contraction `jax.nn.dot_product_attention`
  emits (the shipped prior's 16x16 self-attention: 16 vs 68 ms per UNet call).
  Where the (B, H, T, S) float32 scores would pass `scores_budget` bytes (SD 2's 64x64
  self-attention: 5 GiB for 16 rows), the queries go through in blocks, one after the other
  (each row's softmax is whole, so the result is the same), each block recomputed in the backward pass.
  """
  b, t, h, _ = q.shape
  budget = CPU_SCORES_BUDGET if scores_budget is None else int(scores_budget)
  rows = max(1, budget // (4 * b * h * k.shape[1]))
  if rows >= t:
    return _heads_major_block(q, k, v)
  block = max(d for d in range(1, rows + 1) if t % d == 0)
  qb = jnp.moveaxis(q.reshape(b, t // block, block, h, q.shape[-1]), 1, 0)
  out = jax.lax.map(jax.checkpoint(lambda qi: _heads_major_block(qi, k, v)), qb)
  return jnp.moveaxis(out, 0, 1).reshape(b, t, h, v.shape[-1])


def _heads_major_block(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  probs = attention_probs(q, k)
  vh = jnp.transpose(v, (0, 2, 1, 3))
  out = jnp.einsum("bhts,bhsd->bhtd", probs.astype(v.dtype), vh)
  return jnp.transpose(out, (0, 2, 1, 3))


def attention_probs(q: jax.Array, k: jax.Array) -> jax.Array:
  """Softmax attention probabilities (B, H, T, S) computed in float32."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  qh, kh = jnp.transpose(q, (0, 2, 1, 3)), jnp.transpose(k, (0, 2, 1, 3))
  logits = jnp.einsum("bhtd,bhsd->bhts", qh, kh, preferred_element_type=jnp.float32) * scale
  return jax.nn.softmax(logits, axis=-1)


class Attention(nn.Module):
  """diffusers `Attention` as used by the SD UNet: self- or cross-attention.

  Attributes:
    heads: number of heads.
    dim_head: channels per head.
    capture: sow the probabilities (B, H, T_q, T_k) as intermediates/"cross_attn".
  """
  heads: int
  dim_head: int
  dtype: Any = jnp.float32
  capture: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    inner = self.heads * self.dim_head
    context = x if context is None else context
    dense = lambda name: nn.Dense(inner, use_bias=False, dtype=self.dtype, name=name)
    b, t, _ = x.shape
    q = dense("to_q")(x).reshape(b, t, self.heads, self.dim_head)
    k = dense("to_k")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
    v = dense("to_v")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
    if self.capture:
      probs = attention_probs(q, k)
      self.sow("intermediates", "cross_attn", probs)
      out = jnp.transpose(jnp.einsum("bhts,bhsd->bhtd", probs.astype(v.dtype), jnp.transpose(v, (0, 2, 1, 3))),
                          (0, 2, 1, 3))
    else:
      out = attention(q, k, v, implementation=self.implementation)
    out = out.reshape(b, t, inner)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(out)


class GEGLU(nn.Module):
  """Dense to 2*dim_out, split into value and gate, value * gelu(gate) (exact gelu)."""
  dim_out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h, gate = jnp.split(nn.Dense(2 * self.dim_out, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """diffusers `FeedForward` with GEGLU: `net_0` (GEGLU), `net_2` (Dense back to dim)."""
  mult: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    h = GEGLU(dim * self.mult, dtype=self.dtype, name="net_0")(x)
    return nn.Dense(dim, dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual."""
  heads: int
  dim_head: int
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    attn = lambda name, capture: Attention(self.heads, self.dim_head, dtype=self.dtype, capture=capture,
                                           implementation=self.implementation, name=name)
    x = attn("attn1", False)(norm("norm1")(x)) + x
    x = attn("attn2", self.capture_cross_attention)(norm("norm2")(x), context) + x
    x = FeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x)) + x
    return x


class Transformer2DModel(nn.Module):
  """diffusers `Transformer2DModel` on continuous NHWC inputs.

  GroupNorm `norm` (eps 1e-6), `proj_in` / `proj_out` as Dense when
  `use_linear_projection` else 1x1 convs, then `num_layers` transformer blocks.
  """
  heads: int
  dim_head: int
  norm_num_groups: int = 32
  use_linear_projection: bool = False
  num_layers: int = 1
  dtype: Any = jnp.float32
  capture_cross_attention: bool = False
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    inner = self.heads * self.dim_head
    h = nn.GroupNorm(num_groups=self.norm_num_groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    if self.use_linear_projection:
      h = nn.Dense(inner, dtype=self.dtype, name="proj_in")(h.reshape(b, hgt * wid, c))
    else:
      h = Conv(inner, (1, 1), dtype=self.dtype, name="proj_in")(h).reshape(b, hgt * wid, inner)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.heads, self.dim_head, dtype=self.dtype,
                                capture_cross_attention=self.capture_cross_attention,
                                implementation=self.implementation, name=f"transformer_blocks_{i}")(h, context)
    if self.use_linear_projection:
      h = nn.Dense(c, dtype=self.dtype, name="proj_out")(h).reshape(b, hgt, wid, c)
    else:
      h = Conv(c, (1, 1), dtype=self.dtype, name="proj_out")(h.reshape(b, hgt, wid, inner))
    return h + x
