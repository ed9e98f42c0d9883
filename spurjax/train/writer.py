"""Metrics as JSON lines and TensorBoard event files (process 0 writes)."""
from __future__ import annotations

import json
import os

import jax


class MetricWriter:

  def __init__(self, workdir: str, name: str = "metrics"):
    self.enabled = jax.process_index() == 0
    self._path = os.path.join(workdir, f"{name}.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb", name))
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        self._tb = None

  def truncate_after(self, epoch: int) -> None:
    """Drops lines logged after `epoch` (a resumed run rewrites them)."""
    if not self.enabled or not os.path.exists(self._path):
      return
    with open(self._path) as f:
      lines = [l for l in f if l.strip() and json.loads(l).get("epoch", 0) <= epoch]
    with open(self._path, "w") as f:
      f.writelines(lines)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float)) and v is not None:
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
