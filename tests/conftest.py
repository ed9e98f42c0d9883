"""Tests run on CPU with 4 fake devices so sharded code paths are exercised.

One XLA compilation cache serves the whole run (this process, pytest-xdist's workers and the
processes tests start): many tests compile the same small programs. It is made fresh per run, so
a run never reads programs compiled by another version of the code or of jax.
XLA's CPU backend compiles at its lowest optimisation level (FAST_COMPILE): a user's runs are unaffected.
"""
import atexit
import os
import shutil
import tempfile

# The tests' programs are tiny and compiling them is most of the suite's time: XLA's CPU backend
# is told to optimise less (about half the compile time of the tiny prior's training step).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # the first process of the run makes it and removes it
  _cache = tempfile.mkdtemp(prefix="spurjax-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
