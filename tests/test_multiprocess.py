"""Scale-out: 2 processes x 2 CPU devices joined by jax.distributed equal 1 process x 4 devices.

Each run (`tests/mp_worker.py`) trains ERM (with a resumed `fit` and a checkpoint restore),
attributes edits with IG, inpaints counterfactuals and runs the prune stage; the results must agree. A second
test compiles the classifier train step ahead of time for a TPU topology (needs libtpu).
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("transformers")  # the tiny diffusion pipeline's tokenizer

pytestmark = pytest.mark.slow  # end-to-end runs: minutes on a CPU

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mp_worker.py")
DEADLINE_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _other_xla_flags() -> str:
  """This run's XLA flags (conftest's compile settings) less the device count."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  return " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("SPURJAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {_other_xla_flags()}",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]), **extra)
  return env


def _run_all(jobs, deadline: float):
  """Starts every (out_dir, work_dir, env) job, waits for all; kills the rest when one fails or time runs out."""
  procs = []
  for out, work, env in jobs:
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    log = open(os.path.join(out, f"log{len(procs)}.txt"), "w")
    procs.append((subprocess.Popen([sys.executable, WORKER, out, work], env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  failed = None
  try:
    while any(p.poll() is None for p, _ in procs):
      bad = [p for p, _ in procs if p.poll() not in (None, 0)]
      if bad or time.time() > deadline:
        failed = "a worker failed" if bad else f"workers still running after {DEADLINE_S} s"
        break
      time.sleep(0.2)
    if failed is None and any(p.returncode for p, _ in procs):
      failed = "a worker failed"
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()
  if failed:
    logs = []
    for out, _, _ in jobs:
      for name in sorted(os.listdir(out)):
        if name.startswith("log"):
          with open(os.path.join(out, name)) as f:
            logs.append(f"--- {out}/{name}\n" + f.read()[-3000:])
    pytest.fail(f"{failed}:\n" + "\n".join(logs))


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:  # layout of another jax version: try the run
    return True
  return hasattr(_jax, "make_gloo_tcp_collectives")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  if not _gloo_available():
    pytest.skip("this jaxlib has no gloo CPU collectives: multi-process CPU computations cannot run")
  root = tmp_path_factory.mktemp("mp")
  coord = f"localhost:{_free_port()}"
  multi = [(str(root / "multi_out"), str(root / "multi_work"),
            _env(2, SPURJAX_COORDINATOR=coord, SPURJAX_NUM_PROCESSES="2", SPURJAX_PROCESS_ID=str(i)))
           for i in range(2)]
  single = [(str(root / "single_out"), str(root / "single_work"), _env(4))]
  t0 = time.time()
  _run_all(multi + single, t0 + DEADLINE_S)
  return {"single": root / "single_out", "multi": root / "multi_out", "multi_work": root / "multi_work",
          "seconds": time.time() - t0}


def _load(out, p: int, name: str):
  if name in ("report", "info"):
    with open(out / f"p{p}_{name}.json") as f:
      return json.load(f)
  with np.load(out / f"p{p}_{name}.npz") as z:
    return {k: z[k] for k in z.files}


def test_processes_joined(runs):
  for p in range(2):
    info = _load(runs["multi"], p, "info")
    assert (info["process_count"], info["devices"], info["local_devices"]) == (2, 4, 2)
  assert _load(runs["single"], 0, "info")["process_count"] == 1


def test_processes_agree_exactly(runs):
  """Replicated results are the same on every process."""
  assert _load(runs["multi"], 0, "report") == _load(runs["multi"], 1, "report")
  for name in ("params", "ig", "inpaint", "prune", "invert"):
    a, b = _load(runs["multi"], 0, name), _load(runs["multi"], 1, name)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} {k}")


def _split_metrics(rep: dict) -> dict:
  return {s: rep[s] for s in ("val", "test")}


def test_training_matches_single_process(runs):
  one, two = _load(runs["single"], 0, "report"), _load(runs["multi"], 0, "report")
  assert _split_metrics(two) == _split_metrics(one)  # computed from gathered predictions: exact
  assert two["selected_epoch"] == one["selected_epoch"]
  assert two["train_group_counts"] == one["train_group_counts"]
  assert len(two["history"]) == len(one["history"]) == 2
  for h1, h2 in zip(one["history"], two["history"]):
    assert {k: h2[k] for k in ("val", "test")} == {k: h1[k] for k in ("val", "test")}
    assert h2["train"]["train_accuracy"] == h1["train"]["train_accuracy"]
    np.testing.assert_allclose(h2["train"]["loss"], h1["train"]["loss"], rtol=1e-5)
  a, b = _load(runs["single"], 0, "params"), _load(runs["multi"], 0, "params")
  assert a.keys() == b.keys() and len(a) > 4
  for k in a:  # restored from the multi-process Orbax checkpoint
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_attribution_matches_single_process(runs):
  a, b = _load(runs["single"], 0, "ig"), _load(runs["multi"], 0, "ig")
  assert a["maps"].shape == (6, 16, 16) and np.abs(a["maps"]).max() > 0
  np.testing.assert_allclose(b["maps"], a["maps"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(b["rho"], a["rho"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(b["out_edit"], a["out_edit"], rtol=1e-5, atol=1e-6)


def test_inpainting_matches_single_process(runs):
  a, b = _load(runs["single"], 0, "inpaint"), _load(runs["multi"], 0, "inpaint")
  assert a["images"].shape == (6, 8, 8, 3)
  np.testing.assert_array_equal(b["target_class"], a["target_class"])
  np.testing.assert_allclose(b["images"], a["images"], atol=1e-5)
  assert a["stage"].shape == (4, 16, 16, 3)
  assert np.abs(b["stage"].astype(int) - a["stage"].astype(int)).max() <= 1  # PNG rounding


def test_pruning_matches_single_process(runs):
  a, b = _load(runs["single"], 0, "prune"), _load(runs["multi"], 0, "prune")
  assert len(a["rho"]) == 4 and len(a["kept_y"]) > 0
  np.testing.assert_allclose(b["rho"], a["rho"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b["psi"], a["psi"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(b["kept_y"], a["kept_y"])
  assert np.abs(b["kept_images"].astype(int) - a["kept_images"].astype(int)).max() <= 1


def test_textual_inversion_matches_single_process(runs):
  a, b = _load(runs["single"], 0, "invert"), _load(runs["multi"], 0, "invert")
  assert sorted(a) == ["c0", "c1"] and sorted(b) == sorted(a)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_only_process_zero_wrote_shared_files(runs):
  work = runs["multi_work"]
  assert (work / "erm" / "report.json").is_file() and (work / "erm" / "report.md").is_file()
  assert not [n for n in os.listdir(work / "erm") if n.endswith(".tmp")]
  stage = work / "ddb" / "inpaint"
  assert (stage / "edits.csv").is_file() and len(os.listdir(stage / "images")) == 4
  assert not (work / "ddb" / "inpaint.tmp").exists()
  assert (work / "ddb" / "prune" / "metadata.csv").is_file() and not (work / "ddb" / "prune.tmp").exists()
  print(f"multi-process test runs took {runs['seconds']:.1f} s")


# ---------------------------------------------------------------- ahead-of-time compile for a TPU slice


@pytest.mark.parametrize("topology,hosts", [("v5e:2x2", 1), ("v5e:4x4", 4)])
def test_train_step_compiles_for_tpu_topology(topology, hosts):
  """The classifier train step lowers and compiles for a TPU slice (no TPU needed, only libtpu)."""
  pytest.importorskip("libtpu", reason="libtpu (the TPU compiler) is not installed")
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from helpers import toy_config, toy_table
  from spurjax import sharding as shd
  from spurjax.train import losses
  from spurjax.train.loop import init_variables
  from spurjax.train.optim import make_optimizer
  from spurjax.train.state import TrainState
  from spurjax.train.step import make_train_step
  try:
    topo = topologies.get_topology_desc(topology, "tpu")
  except Exception as e:  # libtpu present but cannot describe the topology here
    pytest.skip(f"no TPU topology from libtpu: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
  mesh = shd.make_mesh(topo.devices)
  n = mesh.devices.size
  owners = [d.process_index for d in mesh.devices.flat]
  assert owners == sorted(owners) and len(set(owners)) == hosts  # each host's devices: one block of the batch
  cfg, table = toy_config(), toy_table()
  model, variables = init_variables(cfg, table, jax.random.PRNGKey(0))
  state = TrainState.create(apply_fn=model.apply, variables=variables, tx=make_optimizer(cfg.optim, 10, 5))
  step = make_train_step(losses.get("ce")[0], cfg.method, mesh, dtype=jnp.bfloat16)
  repl, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=repl), state)
  bs = 2 * n
  batch = {"image": jax.ShapeDtypeStruct((bs, 16, 16, 3), jnp.uint8, sharding=data),
           "label": jax.ShapeDtypeStruct((bs,), jnp.int32, sharding=data),
           "group": jax.ShapeDtypeStruct((bs,), jnp.int32, sharding=data),
           "weight": jax.ShapeDtypeStruct((bs,), jnp.float32, sharding=data)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
  compiled = step.lower(state_spec, batch, rng).compile()
  assert "all-reduce" in compiled.as_text()  # gradients and BatchNorm statistics reduced over the slice
  _, metrics = compiled.output_shardings
  assert metrics["loss"].is_fully_replicated
