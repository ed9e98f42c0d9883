"""Integrated Gradients: quadrature, exactness on linear models, completeness, sharding, captum parity."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from helpers import toy_table
from spurjax import models
from spurjax import sharding as shd
from spurjax.ddb.prune import attribute as A
from spurjax.errors import SpurjaxError

H = W = 16


def _linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


@pytest.fixture(scope="module")
def linear():
  w = np.random.default_rng(0).normal(size=(H * W * 3, 3)).astype(np.float32)
  return Partial(_linear, jnp.asarray(w)), w


@pytest.fixture(scope="module")
def trained_cnn():
  """A tiny CNN trained a few steps on the toy data, so logits differ by several units between images."""
  table = toy_table(size=H)
  tr = table.indices("train")
  xs = np.stack([table.image(i) for i in tr]).astype(np.float32) / 255.0
  ys = table.y[tr]
  model = models.get_model("cnn", 2)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, H, W, 3)))
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      f = A.classifier_fn(model, {"params": p, "batch_stats": variables["batch_stats"]})
      return optax.softmax_cross_entropy_with_integer_labels(f(xs), ys).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = variables["params"], opt.init(variables["params"])
  for _ in range(8):
    params, opt_state = step(params, opt_state)
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  x = np.stack([table.image(i) for i in (0, 30, 40, 50)]).astype(np.float32) / 255.0
  return model, variables, x


def test_path_weights_match_captum_formulas():
  a, w = A.path_weights(5, "gausslegendre")
  nodes, weights = np.polynomial.legendre.leggauss(5)
  np.testing.assert_allclose(a, (nodes + 1) / 2)
  np.testing.assert_allclose(w, weights / 2)
  a, w = A.path_weights(4, "riemann_trapezoid")
  np.testing.assert_allclose(a, [0, 1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(w, [1 / 8, 1 / 4, 1 / 4, 1 / 8])  # captum's sum to (n - 1) / n
  np.testing.assert_allclose(A.path_weights(4, "riemann_left")[0], [0, .25, .5, .75])
  np.testing.assert_allclose(A.path_weights(4, "riemann_right")[0], [.25, .5, .75, 1])
  np.testing.assert_allclose(A.path_weights(4, "riemann_middle")[0], [.125, .375, .625, .875])
  with pytest.raises(SpurjaxError, match="unknown"):
    A.path_weights(4, "simpson")
  with pytest.raises(SpurjaxError, match="n_steps"):
    A.path_weights(1, "riemann_left")


@pytest.mark.parametrize("method", A.METHODS)
def test_linear_model_exact(linear, method):
  f, w = linear
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
  b = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
  t = np.array([2, 0])
  attr = np.asarray(A.integrated_gradients(f, x, b, t, n_steps=8, method=method))
  chex.assert_shape(attr, x.shape)
  # grad is constant, so IG = (x - b) * w_t * (sum of the method's weights).
  scale = A.path_weights(8, method)[1].sum()
  want = (x - b) * np.stack([w[:, k].reshape(H, W, 3) for k in t]) * scale
  np.testing.assert_allclose(attr, want, rtol=1e-4, atol=1e-6)


def _tanh_linear(w, x):
  return jnp.tanh(3.0 * _linear(w, x))


def test_chunking_does_not_change_result(linear):
  f = Partial(_tanh_linear, linear[0].args[0])
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
  b = np.zeros_like(x)
  t = np.array([0, 1])
  full = np.asarray(A.integrated_gradients(f, x, b, t, n_steps=12))
  chunked = np.asarray(A.integrated_gradients(f, x, b, t, n_steps=12, chunk=5))  # 3 chunks, 3 padded points
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_completeness_on_trained_cnn(trained_cnn):
  model, variables, x = trained_cnn
  b = np.zeros_like(x)
  t = np.array([0, 1, 1, 0])
  rows = np.arange(4)
  f = A.classifier_fn(model, variables, output="logit")
  delta = A.outputs(f, x)[rows, t] - A.outputs(f, b)[rows, t]
  assert np.all(np.abs(delta) > 1.0), delta  # a meaningful change to attribute
  gaps = {}
  for method in ("gausslegendre", "riemann_trapezoid"):  # same shapes: one compilation
    attr = A.integrated_gradients(f, x, b, t, n_steps=64, chunk=16, method=method)
    gaps[method] = np.abs(A.completeness_gap(f, attr, x, b, t)) / np.abs(delta)
  assert gaps["gausslegendre"].max() < 0.02, gaps
  assert gaps["riemann_trapezoid"].max() < 0.05, gaps


@pytest.mark.slow
def test_sharded_equals_unsharded(trained_cnn):
  assert jax.device_count() == 4
  model, variables, x = trained_cnn
  f = A.classifier_fn(model, variables)
  rng = np.random.default_rng(2)
  b = rng.uniform(size=x.shape).astype(np.float32)
  t = np.array([1, 0, 1, 0])
  mesh = shd.make_mesh()
  kw = {"n_steps": 64, "chunk": 16}  # the shapes of the completeness test: its compilation is reused
  ref = np.asarray(A.integrated_gradients(f, x, b, t, **kw))
  out = A.integrated_gradients(f, x, b, t, mesh=mesh, **kw)
  assert len(out.sharding.device_set) == 4
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)
  odd = A.integrated_gradients(f, x[:3], b[:3], t[:3], mesh=mesh, **kw)  # padded to 4
  np.testing.assert_allclose(np.asarray(odd), ref[:3], rtol=1e-5, atol=1e-6)


def test_attribute_edits_on_linear_model(linear):
  f, w = linear
  rng = np.random.default_rng(3)
  orig = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
  edit = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
  masks = np.zeros((3, H, W), bool)
  masks[:, 4:12, 4:12] = True
  t = np.array([0, 1, 2])
  out = A.attribute_edits(f, orig, edit, masks, t, n_steps=4, batch_size=2)
  per_pixel = ((edit.astype(np.float64) - orig) / 255.0 * np.stack([w[:, k].reshape(H, W, 3) for k in t])).sum(-1)
  np.testing.assert_allclose(out["maps"], per_pixel, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["rho"], (per_pixel * masks).sum((1, 2)), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["total"], per_pixel.sum((1, 2)), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["rho_norm"], out["rho"] / out["total"], rtol=1e-6)
  np.testing.assert_allclose(out["gap"], 0.0, atol=1e-3)
  chex.assert_shape([out["out_edit"], out["out_orig"]], (3, 3))
  with pytest.raises(SpurjaxError, match="masks"):
    A.attribute_edits(f, orig, edit, masks[:, :8], t)
  empty = A.attribute_edits(f, orig[:0], edit[:0], masks[:0], t[:0])
  assert empty["rho"].shape == (0,) and empty["maps"].shape == (0, H, W)


def test_ig_settings_validate():
  from spurjax.config_base import base_config
  cfg = base_config()
  cfg.ddb.prune.ig_steps, cfg.ddb.prune.ig_chunk = 16, 0
  s = A.ig_settings(cfg)
  assert s["n_steps"] == 16 and s["chunk"] is None and s["output"] == "logit"
  cfg.ddb.prune.ig_output = "softmax"
  with pytest.raises(SpurjaxError, match="ig_output"):
    A.ig_settings(cfg)


@pytest.fixture(scope="module")
def torch_resnet():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  pytest.importorskip("captum")
  from spurjax.models import torchvision_io
  torch.manual_seed(0)
  net = torchvision.models.resnet18(num_classes=2)
  with torch.no_grad():  # non-trivial BatchNorm statistics
    for mod in net.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.2, 0.2)
        mod.running_var.uniform_(0.5, 2.0)
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.uniform_(-0.2, 0.2)
  net.eval()
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  variables = torchvision_io.variables_from_torchvision(state, "resnet18", 2)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  b = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  return net, variables, x, b, np.array([1, 0])


def _captum(net, x, b, t, method, dtype):
  import torch
  from captum.attr import IntegratedGradients
  net = net.to(dtype)
  mean = torch.tensor(A.IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1)
  std = torch.tensor(A.IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1)
  ig = IntegratedGradients(lambda z: net((z - mean) / std))
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
  out = ig.attribute(nchw(x), nchw(b), target=torch.from_numpy(t), n_steps=16, method=method)
  return out.permute(0, 2, 3, 1).detach().numpy()


@pytest.mark.slow
def test_captum_parity_float32(torch_resnet):
  """fp32 gausslegendre: attributions allclose(rtol 1e-3, atol 1e-4 * max|attr|)."""
  import torch
  net, variables, x, b, t = torch_resnet
  f = A.classifier_fn(models.get_model("resnet18", 2), variables)
  ref = _captum(net, x, b, t, "gausslegendre", torch.float32)
  ours = np.asarray(A.integrated_gradients(f, x, b, t, n_steps=16, method="gausslegendre"))
  np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


@pytest.mark.skipif(not hasattr(jax, "enable_x64"), reason="needs the jax.enable_x64 context manager")
@pytest.mark.slow
def test_captum_parity_float64(torch_resnet):
  """fp64 removes ReLU/max-pool ties flipped by fp32 rounding differences (seen in fp32 riemann_trapezoid at
  one path point): allclose(rtol 1e-5, atol 1e-6 * max|attr|). Gauss-Legendre is checked in fp32 above."""
  import torch
  net, variables, x, b, t = torch_resnet
  x64, b64 = x.astype(np.float64), b.astype(np.float64)
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    f = A.classifier_fn(models.get_model("resnet18", 2, jnp.float64), v64)
    for method in ("riemann_trapezoid",):
      ref = _captum(net, x64, b64, t, method, torch.float64)
      ours = np.asarray(A.integrated_gradients(f, x64, b64, t, n_steps=16, method=method))
      assert ours.dtype == np.float64
      np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=method)
  net.float()
