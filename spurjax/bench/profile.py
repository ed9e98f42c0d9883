"""Per-op time of a compiled XLA computation: `--profile` on the speed benchmarks.

`op_profile(fn, hlo_text)` runs `fn()` under `jax.profiler` (a Perfetto trace in a temporary
folder), sums the duration of each XLA thunk (one event per HLO instruction on XLA's CPU client
threads) over the calls, and labels each instruction with its opcode, output shape and, for a
fusion, the heavy ops inside it (convolution, dot, reduce, ...), read from the compiled module's
HLO text. `print_profile` prints the top rows and the same time summed by kind, which is how the
README's performance notes were made.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?)(?:\{[^}]*\})?\s+([\w\-]+)\(")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_DIMS = re.compile(r"dim_labels=([\w>\-]+)")
_HEAVY = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter", "scatter", "gather",
          "transpose", "concatenate", "pad", "sort", "custom-call")


def parse_hlo(text: str) -> dict[str, dict]:
  """{instruction name: {"op", "shape", "inner"}} for every instruction in an HLO module's text."""
  comps: dict[str, list[str]] = {}
  instrs: dict[str, dict] = {}
  current = None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m:
      name, shape, op = m.groups()
      calls = _CALLS.search(line)
      dims = _DIMS.search(line)
      instrs[name] = {"op": op, "shape": shape, "calls": calls.group(1) if calls else None,
                      "dims": dims.group(1) if dims else None}
      if current is not None:
        comps[current].append(name)
      continue
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      comps[current] = []
  for info in instrs.values():
    inner = []
    if info["calls"] in comps:
      ops = [instrs[n]["op"] for n in comps[info["calls"]]]
      inner = sorted({o for o in ops if o in _HEAVY})
    info["inner"] = "+".join(inner)
  return instrs


def _trace_events(folder: str) -> list[dict]:
  paths = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    return []
  with gzip.open(paths[0]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def op_profile(fn: Callable, hlo_text: str = "", *, iters: int = 3) -> tuple[list[dict], float]:
  """Rows {"name", "op", "shape", "inner", "ms"} (per call, slowest first) and the total ms per call.

  `fn()` must already be compiled (call it once before); `hlo_text` is its compiled module's
  `as_text()` (without it the rows carry only the thunk names).
  """
  info = parse_hlo(hlo_text) if hlo_text else {}
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    try:
      for _ in range(iters):
        jax.block_until_ready(fn())
    finally:
      jax.profiler.stop_trace()
    events = _trace_events(folder)
  threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
             for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
  total: collections.Counter = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or "::" in name or name.startswith("end: ") or name.startswith("$"):
      continue
    if not threads.get((e.get("pid"), e.get("tid")), "").startswith("tf_XLA"):
      continue
    if info and name not in info:
      continue
    total[name] += float(e.get("dur", 0.0)) / 1e3 / iters
  rows = []
  for name, ms in total.most_common():
    d = info.get(name, {})
    rows.append({"name": name, "op": d.get("op", ""), "shape": d.get("shape", ""),
                 "inner": d.get("inner", "") or (d.get("dims") or ""), "ms": ms})
  return rows, sum(total.values())


def kind_of(row: dict) -> str:
  """A row's kind: the opcode, or for a fusion the heavy ops inside it ('fusion[convolution]')."""
  if row["op"] == "fusion":
    return f"fusion[{row['inner']}]" if row["inner"] else "fusion[elementwise]"
  return row["op"] or re.sub(r"\.\d+$", "", row["name"])


def print_profile(title: str, rows: list[dict], total_ms: float, top: int = 15) -> str:
  """Prints the `top` slowest instructions and the time by kind; returns the text."""
  from spurjax.bench.common import print_table
  share = lambda ms: f"{100 * ms / total_ms:.1f}%" if total_ms else ""  # noqa: E731
  out = [print_table(f"{title}: top {min(top, len(rows))} of {len(rows)} XLA ops, {total_ms:.1f} ms of thunks per call",
                     ["instruction", "kind", "shape", "ms/call", "share"],
                     [[r["name"], kind_of(r), r["shape"], r["ms"], share(r["ms"])] for r in rows[:top]])]
  kinds: collections.Counter = collections.Counter()
  counts: collections.Counter = collections.Counter()
  for r in rows:
    kinds[kind_of(r)] += r["ms"]
    counts[kind_of(r)] += 1
  out.append(print_table(f"{title}: time by kind", ["kind", "instructions", "ms/call", "share"],
                         [[k, counts[k], ms, share(ms)] for k, ms in kinds.most_common(top)]))
  return "\n".join(out)


def profile_jitted(title: str, jitted, args: tuple, run: Callable, *, iters: int = 3, top: int = 15) -> str:
  """`print_profile` of `run()` (which calls `jitted` on arguments shaped like `args`)."""
  text = jitted.lower(*args).compile().as_text()
  rows, total = op_profile(run, text, iters=iters)
  return print_profile(title, rows, total, top)
