"""Tests run on CPU with 4 fake devices so sharded code paths are exercised.

One XLA compilation cache serves the whole run (this process, pytest-xdist's workers and the
processes tests start): many tests compile the same small programs. It is made fresh per run, so
a run never reads programs compiled by another version of the code or of jax.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # the first process of the run makes it and removes it
  _cache = tempfile.mkdtemp(prefix="spurjax-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
