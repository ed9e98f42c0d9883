"""Classifiers (shapes, BatchNorm state, features, dtypes) and torchvision weight import/export."""
import functools
import logging
import os
import pickle
import zipfile

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import sharding
from spurjax.errors import SpurjaxError
from spurjax.models import MODEL_NAMES, feature_dim, get_model
from spurjax.models import torchvision_io as tvio

NUM_CLASSES = 10
BATCH, SIZE = 2, 32
PARITY_ATOL = 1e-4  # absolute, on eval-mode logits of magnitude O(1)


@pytest.fixture(scope="module")
def x():
  return np.random.RandomState(0).randn(BATCH, SIZE, SIZE, 3).astype(np.float32)


@pytest.fixture(scope="module")
def inits(x):
  """model.init for the two cheap models (resnet50 is exercised through torchvision weights).

  An "rbg" key compiles much faster on CPU than the default threefry one.
  """
  out = {}
  for name in ("cnn", "resnet18"):
    model = get_model(name, NUM_CLASSES)
    init = jax.jit(lambda k, m=model: m.init(k, x, train=False))
    out[name] = (model, init(jax.random.key(0, impl="rbg")))
  return out


def _tree_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), a, b)))


# ------------------------------------------------------------------ the models


def test_unknown_model_lists_valid_names():
  with pytest.raises(SpurjaxError, match=", ".join(MODEL_NAMES)):
    get_model("vgg16", NUM_CLASSES)
  with pytest.raises(SpurjaxError, match="num_classes"):
    get_model("cnn", 0)


def test_cnn_is_small(inits):
  n = sum(p.size for p in jax.tree.leaves(inits["cnn"][1]["params"]))
  assert 100_000 <= n <= 500_000, n


def test_resnet_param_counts():
  """Same parameter counts as torchvision (1000 classes): 11,689,512 and 25,557,032."""
  for name, want in (("resnet18", 11_689_512), ("resnet50", 25_557_032)):
    model = get_model(name, 1000)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"])) == want
    assert set(shapes) == {"params", "batch_stats"}


@pytest.fixture(scope="module")
def outs(inits, x):
  """Eval-mode (with features) and train-mode outputs of each initialised model, each jitted once."""
  out = {}
  for name, (model, variables) in inits.items():
    evaluate = jax.jit(functools.partial(model.apply, train=False, return_features=True))
    train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    out[name] = {"eval": evaluate(variables, x), "train": train(variables, x)}
  return out


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_shapes_and_dtypes(inits, outs, name):
  _, variables = inits[name]
  assert set(variables) == {"params", "batch_stats"}
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, feats = outs[name]["eval"]
  chex.assert_shape([logits, feats], [(BATCH, NUM_CLASSES), (BATCH, feature_dim(name))])
  chex.assert_type([logits, feats], jnp.float32)
  fc = variables["params"]["fc"]
  chex.assert_trees_all_close(feats @ fc["kernel"] + fc["bias"], logits, atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_batch_stats_update_in_train_mode(inits, outs, name):
  _, variables = inits[name]
  logits, state = outs[name]["train"]
  chex.assert_shape(logits, (BATCH, NUM_CLASSES))
  chex.assert_trees_all_equal_structs(state["batch_stats"], variables["batch_stats"])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(logits, outs[name]["eval"][0])  # batch statistics, not running ones


def test_eval_mode_keeps_batch_stats(inits, outs, x):
  model, variables = inits["cnn"]
  logits, same = jax.jit(functools.partial(model.apply, train=False, mutable=["batch_stats"]))(variables, x)
  assert _tree_equal(same["batch_stats"], variables["batch_stats"])
  chex.assert_trees_all_close(logits, outs["cnn"]["eval"][0], atol=1e-5)  # return_features changes nothing


def test_batchnorm_momentum_matches_torch(inits, outs, x):
  """Running stats after one step = 0.9 * init + 0.1 * batch stats (torch momentum 0.1)."""
  _, variables = inits["cnn"]
  stats = outs["cnn"]["train"][1]["batch_stats"]["bn_0"]
  conv = flax.linen.Conv(32, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  y = conv.apply({"params": variables["params"]["conv_0"]}, x)
  np.testing.assert_allclose(stats["mean"], 0.1 * y.mean(axis=(0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var(axis=(0, 1, 2)), rtol=1e-4)


def test_bfloat16_activations(inits, outs, x):
  _, variables = inits["cnn"]
  model = get_model("cnn", NUM_CLASSES, dtype=jnp.bfloat16)
  logits, feats = jax.jit(functools.partial(model.apply, train=False, return_features=True))(variables, x)
  chex.assert_type([logits, feats], jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(1), jnp.asarray(x), train=False))
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  ref = outs["cnn"]["eval"][0]
  chex.assert_trees_all_close(logits, ref, atol=0.1 * float(np.abs(ref).max()) + 0.05)


def test_jit_on_sharded_batch(inits):
  model, variables = inits["cnn"]
  mesh = sharding.make_mesh()
  xb = np.random.RandomState(1).randn(8, SIZE, SIZE, 3).astype(np.float32)
  step = jax.jit(lambda v, b: model.apply(v, b, train=True, mutable=["batch_stats"]))
  logits, state = step(sharding.replicate(variables, mesh), sharding.shard_batch(xb, mesh))
  ref_logits, ref_state = model.apply(variables, xb, train=True, mutable=["batch_stats"])
  chex.assert_trees_all_close(logits, ref_logits, atol=1e-4)
  chex.assert_trees_all_close(state, ref_state, atol=1e-5)


# ------------------------------------------------------------------ files without torch


def test_load_errors_without_torch(tmp_path):
  with pytest.raises(SpurjaxError, match="no such weights file"):
    tvio.load_state_dict(tmp_path / "absent.pth")
  (tmp_path / "w.npz").write_bytes(b"x")
  with pytest.raises(SpurjaxError, match="unknown weights format"):
    tvio.load_state_dict(tmp_path / "w.npz")
  (tmp_path / "junk.pth").write_bytes(os.urandom(256))
  with pytest.raises(SpurjaxError, match="junk.pth"):
    tvio.load_state_dict(tmp_path / "junk.pth")
  (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(SpurjaxError, match="junk.safetensors"):
    tvio.load_state_dict(tmp_path / "junk.safetensors")


def test_unpickler_refuses_arbitrary_globals(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"a": os.system}, protocol=2))
  with pytest.raises(SpurjaxError, match="refusing to load"):
    tvio.load_state_dict(path)


def test_safetensors_roundtrip_without_torch(tmp_path):
  sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, np.int64)}
  tvio.save_safetensors(sd, tmp_path / "s.safetensors")
  out = tvio.load_state_dict(tmp_path / "s.safetensors")
  assert set(out) == set(sd) and all(np.array_equal(out[k], sd[k]) for k in sd)


def test_cnn_has_no_torchvision_layout():
  with pytest.raises(SpurjaxError, match="no torchvision layout"):
    tvio.variables_from_torchvision({}, "cnn", NUM_CLASSES)


# ------------------------------------------------------------------ torchvision parity


@pytest.fixture(scope="module")
def tv(tmp_path_factory):
  """torchvision resnet18/50 with random weights and BN stats, saved as .pth and .safetensors."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from safetensors.torch import save_file
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # the test machine's cores are shared
  out = {}
  root = tmp_path_factory.mktemp("tv")
  for seed, name in enumerate(("resnet18", "resnet50")):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    with torch.no_grad():
      for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
          mod.weight.uniform_(0.3, 0.8)
          mod.bias.uniform_(-0.3, 0.3)
          mod.running_mean.uniform_(-0.5, 0.5)
          mod.running_var.uniform_(0.5, 2.0)
    model.eval()
    xt = torch.from_numpy(np.random.RandomState(seed).randn(BATCH, 3, SIZE, SIZE).astype(np.float32))
    with torch.no_grad():
      ref = model(xt).numpy()
    sd = model.state_dict()
    torch.save(sd, root / f"{name}.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / f"{name}.safetensors"))
    out[name] = dict(model=model, x=xt.numpy().transpose(0, 2, 3, 1), ref=ref, root=root,
                     sd={k: v.numpy() for k, v in sd.items()})
  yield out
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(tv):
  """Each saved file read back through load_state_dict (once)."""
  return {(name, ext): tvio.load_state_dict(tv[name]["root"] / f"{name}.{ext}")
          for name in tv for ext in ("pth", "safetensors")}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.slow
def test_loaders_read_torchvision_files_exactly(tv, loaded, name):
  ref = tv[name]["sd"]
  for ext in ("pth", "safetensors"):
    sd = loaded[(name, ext)]
    assert set(sd) == set(ref)
    for k, v in ref.items():
      assert sd[k].dtype == v.dtype and np.array_equal(sd[k], v), (ext, k)


@pytest.fixture(scope="module")
def eval_fns():
  """A jitted eval-mode forward (logits, features) per resnet, shared by both file formats."""
  return {name: jax.jit(functools.partial(get_model(name, NUM_CLASSES).apply, train=False, return_features=True))
          for name in ("resnet18", "resnet50")}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("ext", ["pth", "safetensors"])
@pytest.mark.slow
def test_eval_logits_match_torchvision(tv, loaded, eval_fns, name, ext):
  t = tv[name]
  assert 0.3 < np.abs(t["ref"]).max() < 10  # logits are O(1)
  variables = tvio.variables_from_torchvision(loaded[(name, ext)], name, NUM_CLASSES, what=f"{name}.{ext}")
  logits, feats = eval_fns[name](variables, t["x"])
  chex.assert_shape(feats, (BATCH, feature_dim(name)))
  np.testing.assert_allclose(np.asarray(logits), t["ref"], atol=PARITY_ATOL, rtol=0)


def test_resnet50_train_mode_structure(tv):
  """Train mode returns logits and batch_stats shaped like the converted ones (traced, not compiled)."""
  variables = tvio.variables_from_torchvision(tv["resnet50"]["sd"], "resnet50", NUM_CLASSES)
  model = get_model("resnet50", NUM_CLASSES)
  logits, state = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                                 variables, tv["resnet50"]["x"])
  assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32
  chex.assert_trees_all_equal_shapes(state["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_roundtrip_to_torchvision_keys(tv, name):
  torch = pytest.importorskip("torch")
  ref = tv[name]["sd"]
  back = tvio.variables_to_torchvision(tvio.variables_from_torchvision(ref, name, NUM_CLASSES), name)
  assert set(back) == set(ref)
  for k, v in ref.items():
    assert back[k].shape == v.shape, k
    if not k.endswith("num_batches_tracked"):
      assert np.array_equal(back[k], v), k
  tv[name]["model"].load_state_dict({k: torch.tensor(v) for k, v in back.items()}, strict=True)


def test_export_rejects_other_variables(inits):
  with pytest.raises(SpurjaxError, match="do not fit resnet50"):
    tvio.variables_to_torchvision(inits["resnet18"][1], "resnet50")
  with pytest.raises(SpurjaxError, match="do not fit resnet18: batch_stats/bn1/mean is missing"):
    tvio.variables_to_torchvision(inits["cnn"][1], "resnet18")


def test_other_head_size_keeps_init_head(tv, inits, caplog):
  _, init_vars = inits["resnet18"]
  sd = dict(tv["resnet18"]["sd"])
  sd["fc.weight"] = np.zeros((1000, 512), np.float32)
  sd["fc.bias"] = np.zeros((1000,), np.float32)
  with caplog.at_level(logging.WARNING):
    variables = tvio.variables_from_torchvision(sd, "resnet18", NUM_CLASSES, init_variables=init_vars)
  assert "fc has 1000 classes, the model 10; keeping the init_variables' fc head" in caplog.text
  assert _tree_equal(variables["params"]["fc"], init_vars["params"]["fc"])
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
  fresh = tvio.variables_from_torchvision(sd, "resnet18", NUM_CLASSES)
  chex.assert_shape(fresh["params"]["fc"]["kernel"], (512, NUM_CLASSES))
  assert np.abs(np.asarray(fresh["params"]["fc"]["kernel"])).max() > 0


def test_conversion_errors(tv):
  ref = tv["resnet18"]["sd"]
  sd = {k: v for k, v in ref.items() if k != "layer2.1.bn2.running_var"}
  with pytest.raises(SpurjaxError, match=r"w\.pth: missing tensor 'layer2\.1\.bn2\.running_var'"):
    tvio.variables_from_torchvision(sd, "resnet18", NUM_CLASSES, what="w.pth")
  sd = dict(ref, **{"layer3.0.conv1.weight": np.zeros((256, 128, 1, 1), np.float32)})
  with pytest.raises(SpurjaxError, match=r"'layer3\.0\.conv1\.weight' has shape \(256, 128, 1, 1\)"):
    tvio.variables_from_torchvision(sd, "resnet18", NUM_CLASSES, what="w.pth")
  sd = dict(ref, **{"extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(SpurjaxError, match="unexpected tensor 'extra.weight'"):
    tvio.variables_from_torchvision(sd, "resnet18", NUM_CLASSES)
  with pytest.raises(SpurjaxError, match="missing tensor"):  # a resnet18 file read as resnet50
    tvio.variables_from_torchvision(ref, "resnet50", NUM_CLASSES)


def test_corrupt_torch_files(tv, tmp_path):
  blob = (tv["resnet18"]["root"] / "resnet18.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
  with pytest.raises(SpurjaxError, match="cut.pth"):
    tvio.load_state_dict(tmp_path / "cut.pth")
  with zipfile.ZipFile(tv["resnet18"]["root"] / "resnet18.pth") as src, \
       zipfile.ZipFile(tmp_path / "short.pth", "w") as dst:
    for item in src.namelist():
      data = src.read(item)
      dst.writestr(item, data[:8] if item.endswith("/data/3") else data)
  with pytest.raises(SpurjaxError, match="short.pth"):
    tvio.load_state_dict(tmp_path / "short.pth")


def test_half_precision_and_strided_tensors(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  base = torch.randn(4, 6)
  sd = {"bf16": torch.randn(3, 5).to(torch.bfloat16), "f16": torch.randn(7).half(),
        "t": base.t(), "row": base[2], "i": torch.arange(5), "nested": {"w": torch.ones(2)}}
  torch.save({"state_dict": {k: v for k, v in sd.items() if k != "nested"}, "epoch": 3}, tmp_path / "c.pt")
  out = tvio.load_state_dict(tmp_path / "c.pt")
  for k in ("bf16", "f16", "t", "row"):
    assert out[k].dtype == np.float32 and np.array_equal(out[k], sd[k].float().numpy()), k
  assert out["i"].dtype == np.int64 and np.array_equal(out["i"], np.arange(5))
  save_file({"module.bf16": sd["bf16"]}, str(tmp_path / "b.safetensors"))
  out = tvio.load_state_dict(tmp_path / "b.safetensors")
  assert np.array_equal(out["bf16"], sd["bf16"].float().numpy())
  torch.save(sd, tmp_path / "nested.pth")
  with pytest.raises(SpurjaxError, match="'nested' is a dict"):
    tvio.load_state_dict(tmp_path / "nested.pth")
