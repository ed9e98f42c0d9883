"""Multi-process start-up: `jax.distributed` when launched as several processes, else nothing.

Set SPURJAX_COORDINATOR (host:port), SPURJAX_NUM_PROCESSES and SPURJAX_PROCESS_ID, or run
under a cluster JAX detects itself (SLURM, TPU pods: set SPURJAX_DISTRIBUTED=auto).
Call `maybe_initialize()` before anything touches a JAX backend (`spurjax.cli.main` does).

CPU processes exchange data through gloo (TCP) collectives; without them a computation
spanning several processes' CPU devices fails. JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi
(or gloo) in the environment takes precedence.
"""
from __future__ import annotations

import os

import jax

from spurjax.errors import SpurjaxError

_DONE = False


def _env_int(name: str) -> int:
  value = os.environ.get(name, "")
  try:
    return int(value)
  except ValueError:
    raise SpurjaxError(f"environment {name}={value!r} must be an integer (set with SPURJAX_COORDINATOR)") from None


def _cpu_collectives() -> None:
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize() -> None:
  """Joins the process group named by the environment (idempotent; a no-op for one process)."""
  global _DONE
  if _DONE:
    return
  coord = os.environ.get("SPURJAX_COORDINATOR")
  if coord:
    num, pid = _env_int("SPURJAX_NUM_PROCESSES"), _env_int("SPURJAX_PROCESS_ID")
    if num < 1 or not 0 <= pid < num:
      raise SpurjaxError(f"environment SPURJAX_PROCESS_ID={pid} must be in [0, SPURJAX_NUM_PROCESSES={num})")
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=coord, num_processes=num, process_id=pid)
  elif os.environ.get("SPURJAX_DISTRIBUTED") == "auto":
    _cpu_collectives()
    jax.distributed.initialize()
  _DONE = True


def is_main() -> bool:
  """True on the process that writes shared files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def from_main(value):
  """Process 0's `value` (a bool, int or numeric numpy array) on every process; every process must call it.

  Decisions that select which computations run (resume checks reading files) must agree
  across processes, or their collectives mismatch.
  """
  if jax.process_count() == 1:
    return value
  import numpy as np
  from jax.experimental import multihost_utils
  out = np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))
  return type(value)(out) if isinstance(value, (bool, int, float)) else out
