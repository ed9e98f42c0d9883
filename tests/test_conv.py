"""spurjax.models.conv: the CPU routes equal lax.conv_general_dilated / reduce_window, values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from spurjax.models import conv

# (N, H, W, Cin, Cout, k, stride, padding): small maps (patches forward), 1x1, strided, 7x7 stem, big maps.
SHAPES = [(2, 2, 2, 8, 4, 3, 1, 1), (2, 4, 4, 6, 5, 3, 2, 1), (2, 5, 5, 4, 3, 1, 2, 0), (1, 12, 12, 3, 4, 7, 2, 3),
          (2, 9, 9, 3, 4, 3, 1, "SAME"), (1, 7, 6, 2, 3, 3, 2, "VALID")]


def _reference(x, k, s, p):
  pads = p if isinstance(p, str) else ((p, p), (p, p))
  return lax.conv_general_dilated(x, k, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape,impl", [(s, "auto") for s in SHAPES] + [(SHAPES[4], "patches")])
@pytest.mark.slow
def test_conv2d_matches_lax_forward_and_gradients(shape, impl):
  n, h, w, ci, co, k, s, p = shape
  r = np.random.RandomState(0)
  x = jnp.asarray(r.randn(n, h, w, ci), jnp.float32)
  kernel = jnp.asarray(r.randn(k, k, ci, co), jnp.float32)
  with conv.implementation(impl):
    ours = conv.conv2d(x, kernel, (s, s), p)
    ours_grad = jax.grad(lambda a, b: jnp.sum(jnp.sin(conv.conv2d(a, b, (s, s), p))), (0, 1))(x, kernel)
  ref = _reference(x, kernel, s, p)
  ref_grad = jax.grad(lambda a, b: jnp.sum(jnp.sin(_reference(a, b, s, p))), (0, 1))(x, kernel)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(ours_grad, ref_grad):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_xla_implementation_is_lax_conv():
  x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  with conv.implementation("xla"):
    jaxpr = jax.make_jaxpr(lambda a, b: conv.conv2d(a, b, (1, 1), 1))(x, kernel)
  assert [e.primitive.name for e in jaxpr.eqns] == ["conv_general_dilated"]
  with conv.implementation("patches"):
    jaxpr = jax.make_jaxpr(lambda a, b: conv.conv2d(a, b, (1, 1), 1))(x, kernel)
  assert "conv_general_dilated" not in str(jaxpr)


def test_unknown_implementation_is_refused():
  with pytest.raises(ValueError, match="conv implementation"):
    with conv.implementation("fast"):
      pass


def test_conv_module_has_flax_conv_parameters_and_value():
  x = jnp.asarray(np.random.RandomState(1).randn(2, 6, 6, 3), jnp.float32)
  ours = conv.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  theirs = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  variables = theirs.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_max_pool_matches_flax_with_ties():
  # relu outputs: many all-zero windows, where the gradient must go to the first maximum only.
  x = jnp.asarray(np.maximum(np.random.RandomState(2).randn(2, 9, 9, 3), 0), jnp.float32)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  ours = lambda a: jnp.sum(jnp.sin(conv.max_pool(a, *args)) * jnp.arange(3.0))  # noqa: E731
  ref = lambda a: jnp.sum(jnp.sin(nn.max_pool(a, args[0], strides=args[1], padding=args[2])) * jnp.arange(3.0))  # noqa: E731
  np.testing.assert_array_equal(conv.max_pool(x, *args), nn.max_pool(x, args[0], strides=args[1], padding=args[2]))
  np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(ref)(x))


@pytest.mark.slow
def test_bench_conv_prints_a_row_per_shape(capsys):
  from spurjax.bench import conv as bench_conv
  assert bench_conv.main(["--shape", "2,4,2,3,3,1", "--shape", "2,4,2,3,3,2", "--iters", "1", "--no-torch"]) == 0
  out = capsys.readouterr().out
  assert "2x4x4 2->3 k3 " in out and "2x4x4 2->3 k3 s2" in out and "lax.conv" in out
  for bad in ("2,4,2", "2,4,x,3,3,1", "2,4,0,3,3,1"):
    with pytest.raises(SystemExit) as exc:
      bench_conv.main(["--shape", bad, "--no-torch"])
    assert exc.value.code == 2 and "N,HW,CIN,COUT,K,STRIDE" in capsys.readouterr().err
