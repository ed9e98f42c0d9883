"""spurjax.bench.profile: per-op XLA thunk times, labelled from the compiled HLO."""
import jax
import jax.numpy as jnp
import numpy as np

from spurjax.bench import profile


def _step():
  def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y) ** 2)
  g = jax.jit(jax.grad(loss))
  r = np.random.RandomState(0)
  w = jnp.asarray(r.randn(3, 3, 8, 16), jnp.float32)
  x = jnp.asarray(r.randn(4, 16, 16, 8), jnp.float32)
  return g, (w, x)


def test_parse_hlo_labels_convolutions_with_shapes():
  g, args = _step()
  info = profile.parse_hlo(g.lower(*args).compile().as_text())
  convs = [v for v in info.values() if v["op"] == "convolution" or "convolution" in v["inner"]]
  assert convs, info
  shapes = {v["shape"] for v in convs}
  assert any(s.startswith("f32[4,16,16,16]") for s in shapes) or any(s.startswith("f32[3,3,8,16]") for s in shapes)


def test_op_profile_times_the_convolutions_and_prints_kinds(capsys):
  g, args = _step()
  jax.block_until_ready(g(*args))
  rows, total = profile.op_profile(lambda: g(*args), g.lower(*args).compile().as_text(), iters=2)
  assert total > 0 and rows
  assert rows == sorted(rows, key=lambda r: -r["ms"])
  kinds = {profile.kind_of(r) for r in rows}
  assert any("convolution" in k for k in kinds), kinds
  text = profile.print_profile("toy", rows, total, top=5)
  assert "time by kind" in text and "ms/call" in capsys.readouterr().out
