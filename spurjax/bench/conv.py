"""`spurjax bench conv`: one convolution's forward + backward, XLA vs spurjax's routing vs torch.

The smallest reproduction of where the CPU time of spurjax's models goes: each row times
`grad(sum(conv(x, w) * dy))` with respect to x and w (what a train step does per layer) for
`lax.conv_general_dilated`, the patches formulation (`spurjax.models.conv`, k*k shifted slices
times the reshaped kernel), `conv2d` as routed on this backend, and `torch.nn.functional.conv2d`
(NCHW, as torch prefers) with autograd. The default shapes are those of the shipped prior's
UNet and of cnn3 (batch 64, 32 px, 16-64 channels), where spurjax is slowest against torch, and
two ResNet shapes where XLA's own convolution is pathological.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.bench.common import device_name, print_table, ratio_text, time_call
from spurjax.models import conv as C

# (batch, height = width, in channels, out channels, kernel, stride): what each is.
SHAPES = (
    (64, 32, 16, 16, 3, 1, "prior UNet, 32 px level"),
    (64, 16, 32, 32, 3, 1, "prior UNet, 16 px level"),
    (64, 8, 64, 64, 3, 1, "prior UNet, 8 px level"),
    (64, 32, 3, 32, 3, 1, "cnn3 stem"),
    (64, 16, 32, 64, 3, 2, "cnn3 stage 2 (stride 2)"),
    (8, 2, 512, 512, 3, 1, "ResNet-18 last stage at 64 px"),
    (32, 32, 64, 64, 3, 1, "ResNet stage 1 at 128 px"),
)


def _jax_ms(fn, x, w, dy, iters):
  loss = lambda x, w: jnp.sum(fn(x, w) * dy)  # noqa: E731
  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return 1e3 * time_call(lambda: step(x, w), warmup=2, iters=iters)


def _torch_ms(x, w, dy, stride, iters):
  import torch
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  dyt = torch.from_numpy(np.array(dy)).permute(0, 3, 1, 2).contiguous()
  pad = w.shape[0] // 2

  def run():
    xt.grad = wt.grad = None
    torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad).backward(dyt)
    return xt.grad

  return 1e3 * time_call(run, warmup=2, iters=iters, sync=lambda _: None)


def run_shape(n, hw, cin, cout, k, stride, iters: int = 5, torch_too: bool = True) -> dict:
  """Milliseconds of one forward + backward for each implementation (torch: None when skipped)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, hw, hw, cin)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(k, k, cin, cout)).astype(np.float32) / np.sqrt(k * k * cin))
  pads = ((k // 2, k // 2),) * 2
  ho = (hw + 2 * (k // 2) - k) // stride + 1
  dy = jnp.asarray(rng.normal(size=(n, ho, ho, cout)).astype(np.float32))
  s = (stride, stride)
  out = {"xla": _jax_ms(lambda x, w: C._xla(x, w, s, pads), x, w, dy, iters),
         "patches": _jax_ms(lambda x, w: C._patches(x, w, s, pads), x, w, dy, iters)}
  with C.implementation("auto"):
    out["spurjax"] = _jax_ms(lambda x, w: C.conv2d(x, w, s, pads), x, w, dy, iters)
  out["torch"] = _torch_ms(x, w, dy, stride, iters) if torch_too else None
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="spurjax bench conv", description=__doc__.splitlines()[0])
  p.add_argument("--shape", action="append", default=None,
                 help="N,HW,CIN,COUT,K,STRIDE (repeatable; default: the prior's, cnn3's and two ResNet shapes)")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-threads", type=int, default=None)
  a = p.parse_args(argv)
  shapes = SHAPES
  if a.shape:
    shapes = []
    for s in a.shape:
      try:
        dims = tuple(int(v) for v in s.split(","))
      except ValueError:
        dims = ()
      if len(dims) != 6 or min(dims) < 1:
        p.error(f"--shape {s}: expected N,HW,CIN,COUT,K,STRIDE (six positive integers)")
      shapes.append(dims + ("",))
  torch_too = not a.no_torch
  if torch_too:
    try:
      import os

      import torch
      torch.set_num_threads(a.torch_threads or os.cpu_count() or 1)
    except ImportError:
      torch_too = False
      print("torch is not installed: no reference column (pip install -e '.[test]')")
  rows = []
  for shp in shapes:
    *dims, what = shp
    r = run_shape(*dims, iters=a.iters, torch_too=torch_too)
    n, hw, cin, cout, k, st = dims
    rows.append([f"{n}x{hw}x{hw} {cin}->{cout} k{k}" + (f" s{st}" if st != 1 else ""), what, r["xla"], r["patches"],
                 r["spurjax"], r["torch"],
                 ratio_text(r["spurjax"], r["torch"], higher_is_better=False) if r["torch"] else ""])
  print_table(f"conv forward + backward, ms per call ({device_name()}, fp32)",
              ["shape (NHWC)", "where", "lax.conv", "patches", "spurjax conv2d", "torch", "spurjax vs torch"], rows)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
