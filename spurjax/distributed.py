"""Multi-process start-up: `jax.distributed` when launched as several processes, else nothing.

Set SPURJAX_COORDINATOR (host:port), SPURJAX_NUM_PROCESSES and SPURJAX_PROCESS_ID, or run
under a cluster JAX detects itself (SLURM, TPU pods: set SPURJAX_DISTRIBUTED=auto).
"""
from __future__ import annotations

import os

import jax

_DONE = False


def maybe_initialize() -> None:
  global _DONE
  if _DONE:
    return
  coord = os.environ.get("SPURJAX_COORDINATOR")
  if coord:
    jax.distributed.initialize(coordinator_address=coord, num_processes=int(os.environ["SPURJAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["SPURJAX_PROCESS_ID"]))
  elif os.environ.get("SPURJAX_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
  _DONE = True
