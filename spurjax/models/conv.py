"""Convolution and max-pooling that every spurjax model uses, fast on the CPU.

XLA's CPU convolution is far from PyTorch's on some shapes (measured on a 2-core
x86 machine, fp32, forward + backward of one conv):

  shape (N, H, W, Cin -> Cout, k)     lax.conv   patches    torch
  8, 2x2, 512 -> 512, 3x3             181 ms     13 ms      36 ms
  8, 4x4, 256 -> 512, 3x3 stride 2     47 ms      7.5 ms    11 ms
  32, 32x32, 64 -> 64, 3x3            764 ms     225 ms    120 ms
  8, 16x16, 256 -> 64, 1x1             43 ms      4.9 ms    5.7 ms

The backward pass is the worst part (XLA's weight gradient of a convolution), and
small feature maps hit a slow path in the forward pass too (openxla/xla#34273).
The "patches" formulation writes a kxk convolution as k*k shifted strided slices
of the padded input, concatenated on channels, times the kernel reshaped to
(k*k*Cin, Cout): one `dot_general`, whose CPU matmul is fast. On the CPU
`conv2d` therefore computes

  * kxk convolutions (k > 1) with more than 4x4 output pixels, any stride and any
    channel count, entirely with `lax.conv_general_dilated` and XLA's own gradient:
    with jax 0.10 its convolutions beat the patches there (`spurjax bench conv`, idle:
    64 x 32x32, 16 -> 16, 3x3: lax.conv 8.1 ms, patches 104 ms, torch 7.1 ms). An
    interleaved A/B of whole train steps (5 rounds each, same process) moved the
    shipped prior's step from 1021 to 909 ms and ResNet-18's (batch 8, 64 px) from
    105 to 92 ms when the stride-2 and few-channel maps joined this route (a rerun on a
    noisier machine: prior 892 -> 782 ms); cnn3 and ResNet-50 stayed within noise. The
    one loss: Integrated Gradients on ResNet-18 at 64 px (`spurjax bench ig`, input
    gradients only) fell from about 16 to 13 images/s, as XLA's input gradient of its
    8x8 and 16x16 maps runs on a slower generic path than the patches' transpose;
  * 1x1 convolutions and output maps of at most 4x4 pixels with patches, forward
    and backward (its transpose: a matmul for the kernel gradient, pads of slices
    for the input gradient): ResNet-18's 2x2 last stage at 64 px takes 4 ms there
    against 85 ms through XLA.

The table above is from an older jax/XLA on a loaded machine; `spurjax bench conv`
prints the current one.

Values equal `lax.conv_general_dilated` up to float summation order (tested,
forward and gradients, on every routed shape). On GPU/TPU, or with
`implementation("xla")`, it is exactly `lax.conv_general_dilated`.

`max_pool` likewise replaces `reduce_window` + its `select_and_scatter` gradient
(slow on the CPU) by shifted slices with a custom gradient that routes each
output's cotangent to the first maximum of its window, as XLA does.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "patches")
_SMALL_OUTPUT = 16          # kxk maps of at most this many output pixels (and every 1x1) take the patches
_state = {"impl": os.environ.get("SPURJAX_CONV", "auto")}


@contextlib.contextmanager
def implementation(name: str):
  """Within the block, trace convolutions with `name` ("auto", "xla" or "patches")."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"conv implementation {name!r}; valid: {', '.join(IMPLEMENTATIONS)}")
  old, _state["impl"] = _state["impl"], name
  try:
    yield
  finally:
    _state["impl"] = old


def current_implementation() -> str:
  """The implementation convolutions traced now use: "xla" or "patches" (auto resolved)."""
  impl = _state["impl"]
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "xla"
  return impl


def _pads(padding, in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int]):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _xla(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _windows(x, kernel_hw, strides, pads):
  """The k*k shifted, strided views of the padded NHWC input, each (N, Ho, Wo, C)."""
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = kernel_hw, strides
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  return [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def _patches(x, kernel, strides, pads):
  kh, kw, cin, cout = kernel.shape
  cols = _windows(x, (kh, kw), strides, pads)
  cols = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  return lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _cpu_conv(x, kernel, strides, pads):
  return _patches(x, kernel, strides, pads)


def _cpu_conv_fwd(x, kernel, strides, pads):
  return _cpu_conv(x, kernel, strides, pads), (x, kernel)


def _cpu_conv_bwd(strides, pads, res, dy):
  x, kernel = res
  _, vjp = jax.vjp(lambda x, k: _patches(x, k, strides, pads), x, kernel)
  return vjp(dy)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1), padding: Any = "SAME") -> jax.Array:
  """NHWC x HWIO convolution, `lax.conv_general_dilated`'s value, routed for speed on the CPU.

  `padding` is "SAME", "VALID", an int or ((top, bottom), (left, right)).
  """
  strides = tuple(int(s) for s in strides)
  pads = _pads(padding, x.shape[1:3], kernel.shape[:2], strides)
  if current_implementation() == "xla":
    return _xla(x, kernel, strides, pads)
  kh, kw = kernel.shape[:2]
  ho = (x.shape[1] + sum(pads[0]) - kh) // strides[0] + 1
  wo = (x.shape[2] + sum(pads[1]) - kw) // strides[1] + 1
  forced = _state["impl"] == "patches"
  if not forced and kh * kw > 1 and ho * wo > _SMALL_OUTPUT:
    return _xla(x, kernel, strides, pads)   # larger kxk maps: XLA's own convolution and gradient win
  return _cpu_conv(x, kernel, strides, pads)


class Conv(nn.Module):
  """`flax.linen.Conv`'s 2-D NHWC case on `conv2d`, with the same parameters ("kernel", "bias")."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding)
    return y + bias if bias is not None else y


def _max_windows(x, window, strides, pads):
  return _windows(x, window, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _cpu_max_pool(x, window, strides, pads):
  return functools.reduce(jnp.maximum, _max_windows(x, window, strides, pads))


def _cpu_max_pool_fwd(x, window, strides, pads):
  y = _cpu_max_pool(x, window, strides, pads)
  return y, (x, y)


def _cpu_max_pool_bwd(window, strides, pads, res, dy):
  x, y = res
  views, vjp = jax.vjp(lambda x: _max_windows(x, window, strides, pads), x)
  free = jnp.ones(y.shape, bool)
  cotangents = []
  for view in views:           # the first maximum of each window takes the whole cotangent
    hit = free & (view == y)
    cotangents.append(jnp.where(hit, dy, jnp.zeros_like(dy)))
    free = free & ~hit
  return vjp(cotangents)


_cpu_max_pool.defvjp(_cpu_max_pool_fwd, _cpu_max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Any = "VALID") -> jax.Array:
  """`flax.linen.max_pool` on NHWC inputs (padding with -inf), fast on the CPU."""
  window, strides = tuple(window), tuple(strides)
  if current_implementation() == "xla":
    return nn.max_pool(x, window, strides=strides, padding=padding)
  pads = _pads(padding, x.shape[1:3], window, strides)
  if any(lo or hi for lo, hi in pads):   # pad with -inf once, then pool unpadded
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  return _cpu_max_pool(x, window, strides, ((0, 0), (0, 0)))
