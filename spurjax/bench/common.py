"""Shared bits of the benchmark commands: timing and a printed table."""
from __future__ import annotations

import time
from typing import Callable

import jax


def time_call(fn: Callable, *, warmup: int = 2, iters: int = 5, sync: Callable = jax.block_until_ready) -> float:
  """Median seconds per call of fn() after `warmup` calls; `sync` waits for its result."""
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t)
  times.sort()
  return times[len(times) // 2]


def device_name() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"


def print_table(title: str, header: list[str], rows: list[list]) -> str:
  cells = [header] + [[("" if c is None else (f"{c:.3g}" if isinstance(c, float) else str(c))) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
  out = "\n".join(lines)
  print(out, flush=True)
  return out


def add_speed_args(p) -> None:
  """--conv (spurjax's convolution path) and --torch-threads, shared by the speed benchmarks."""
  from spurjax.models.conv import IMPLEMENTATIONS
  p.add_argument("--conv", default="auto", choices=IMPLEMENTATIONS,
                 help="convolution path: auto (patches on the CPU), xla (lax.conv everywhere), patches")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch intra-op threads (default: the machine's cores, as XLA uses)")
  p.add_argument("--profile", action="store_true",
                 help="also print spurjax's slowest XLA ops and its time by op kind (jax.profiler trace)")


def speed_setup(args):
  """Applies --torch-threads; returns the context manager that selects --conv while tracing."""
  import os

  from spurjax.models import conv
  try:
    import torch
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
  except ImportError:
    pass
  return conv.implementation(args.conv)


def ratio_text(ours: float, theirs: float, higher_is_better: bool = True, name: str = "the reference") -> str:
  """'1.24x: spurjax faster' style words for a speed ratio (ours over theirs, >1 = spurjax faster)."""
  r = ours / theirs if higher_is_better else theirs / ours
  if abs(r - 1.0) < 0.02:
    return f"{r:.2f}x: as fast as {name}"
  return f"{r:.2f}x: spurjax {'faster' if r > 1 else 'slower'}"
