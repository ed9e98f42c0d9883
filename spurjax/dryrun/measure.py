"""Per-stage measurements: wall time, time compiling, time loading diffusion models, peak host memory and
peak device memory.

Compile time is the union of the spans jax reports for tracing, lowering and backend compilation
(`jax.monitoring` time-span events; nested traces counted once). Peak host memory is the process's
VmHWM after resetting it (writing 5 to /proc/self/clear_refs) when Linux allows, else the largest RSS
a sampling thread saw. Device memory comes from `device.memory_stats()` where the device has it
(GPU / TPU); on a CPU the device memory is host memory and is reported as None.
"""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import threading
import time
from typing import Callable

import jax

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
GIB = float(2 ** 30)


def merged_seconds(spans) -> float:
  """Total length of the union of (start, end) intervals."""
  total, end = 0.0, None
  for a, b in sorted(spans):
    if end is None or a > end:
      total += b - a
      end = b
    elif b > end:
      total += b - end
      end = b
  return total


class CompileClock:
  """Collects jax's compile spans while `active` (registered once per clock; `close` unregisters)."""

  def __init__(self, events=COMPILE_EVENTS):
    self.events = frozenset(events)
    self.spans: list[tuple[float, float]] = []
    self.seen: set[str] = set()
    self._lock = threading.Lock()
    jax.monitoring.register_event_time_span_listener(self._on_span)

  def _on_span(self, event, start_time, end_time, **kwargs):
    del kwargs
    if event in self.events:
      with self._lock:
        self.spans.append((float(start_time), float(end_time)))
        self.seen.add(event)

  def seconds_between(self, start: float, end: float, extra=()) -> float:
    """Compile seconds inside the wall-clock window [start, end] (time.time() values); with `extra`
    spans, the seconds of their union with the compile spans."""
    with self._lock:
      spans = [(max(a, start), min(b, end)) for a, b in [*self.spans, *extra] if b > start and a < end]
    return merged_seconds(spans)

  def close(self) -> None:
    jax.monitoring.unregister_event_time_span_listener(self._on_span)


# ---------------------------------------------------------------- host memory


def _status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def reset_host_peak() -> bool:
  """Resets the kernel's high-water mark of this process's RSS; False where that is not possible."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return _status_kib("VmHWM") is not None
  except OSError:
    return False


def host_rss_bytes() -> int:
  kib = _status_kib("VmRSS")
  return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def host_peak_bytes() -> int:
  kib = _status_kib("VmHWM")
  return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- device memory


def device_stats() -> list[dict]:
  """memory_stats() of each local device that reports one (none on CPU)."""
  out = []
  for d in jax.local_devices():
    try:
      s = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      s = None
    if s:
      out.append(s)
  return out


def device_in_use() -> int | None:
  stats = device_stats()
  return max(int(s.get("bytes_in_use", 0)) for s in stats) if stats else None


def device_peak() -> int | None:
  stats = device_stats()
  return max(int(s.get("peak_bytes_in_use", s.get("bytes_in_use", 0))) for s in stats) if stats else None


class _Sampler:
  """A thread sampling host RSS (and device bytes in use) every `every` seconds, keeping the maxima."""

  def __init__(self, every: float = 0.2):
    self.every, self.host, self.device = every, 0, None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.host = max(self.host, host_rss_bytes())
      d = device_in_use()
      if d is not None:
        self.device = max(self.device or 0, d)
      self._stop.wait(self.every)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


# ---------------------------------------------------------------- one stage


@dataclasses.dataclass
class StageRecord:
  """What one stage's compute cost."""
  stage: str
  wall_s: float
  compile_s: float
  load_s: float          # model loading, less the compiling inside it
  host_peak_gib: float
  device_peak_gib: float | None
  units: float = 0.0
  unit: str = ""
  host_source: str = "VmHWM"


class LoadClock:
  """Seconds spent in `spurjax.diffusion.loading.load_pipeline` (reading weights), while installed."""

  def __init__(self):
    self.spans: list[tuple[float, float]] = []

  @contextlib.contextmanager
  def installed(self):
    from spurjax.diffusion import loading
    real = loading.load_pipeline

    def timed(*args, **kwargs):
      start = time.time()
      try:
        return real(*args, **kwargs)
      finally:
        self.spans.append((start, time.time()))

    loading.load_pipeline = timed
    try:
      yield self
    finally:
      loading.load_pipeline = real


@contextlib.contextmanager
def measure_stage(name: str, clock: CompileClock, loads: LoadClock, records: list, units: Callable[[], tuple],
                  log=print):
  """Measures the block as stage `name`; appends a StageRecord with `units()` -> (count, unit) to `records`."""
  hwm = reset_host_peak()
  dev_start = device_peak()
  log(f"[dryrun] stage {name}: start (host RSS {host_rss_bytes() / GIB:.2f} GiB)")
  start_wall, start = time.time(), time.perf_counter()
  with _Sampler() as sampler:
    yield
  wall = time.perf_counter() - start
  end_wall = time.time()
  host = max(host_peak_bytes(), sampler.host) if hwm else sampler.host
  dev_end = device_peak()
  dev = sampler.device
  if dev_end is not None and dev_start is not None and dev_end > dev_start:
    dev = max(dev or 0, dev_end)   # a new all-time peak was reached inside the stage: exact
  count, unit = units()
  compile_s = clock.seconds_between(start_wall, end_wall)
  fixed = clock.seconds_between(start_wall, end_wall, extra=loads.spans)   # loading traces models too
  rec = StageRecord(stage=name, wall_s=wall, compile_s=compile_s, load_s=max(0.0, fixed - compile_s),
                    host_peak_gib=host / GIB,
                    device_peak_gib=None if dev is None else dev / GIB, units=float(count), unit=unit,
                    host_source="VmHWM" if hwm else "sampled RSS")
  records.append(rec)
  log(f"[dryrun] stage {name}: {wall:.1f} s (compile {rec.compile_s:.1f} s, model loading {rec.load_s:.1f} s), "
      f"{count:g} {unit}, host peak {rec.host_peak_gib:.2f} GiB")
