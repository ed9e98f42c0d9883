"""The one trainer: a full step on mock data, sharded == single device, exact resume, CLI smoke."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import sharding as shd
from spurjax.errors import SpurjaxError
from spurjax.train import losses
from spurjax.train.loop import TrainSet, fit, init_variables
from spurjax.train.optim import make_optimizer
from spurjax.train.state import TrainState
from spurjax.train.step import make_train_step
from helpers import toy_config, toy_table


@pytest.fixture(scope="module")
def setup():
  cfg = toy_config()
  table = toy_table()
  model, variables = init_variables(cfg, table, jax.random.PRNGKey(0))
  return cfg, table, model, variables


def _state(cfg, model, variables):
  tx = make_optimizer(cfg.optim, 10, 5)
  return TrainState.create(apply_fn=model.apply, variables=variables, tx=tx)


def _batch(table, n=8):
  idx = np.arange(n) * 3
  return {"image": np.stack([table.image(i) for i in idx]), "label": table.y[idx], "group": table.group[idx],
          "weight": np.linspace(0.5, 1.5, n).astype(np.float32)}


def test_sharded_step_equals_single_device(setup):
  cfg, table, model, variables = setup
  assert jax.device_count() == 4
  loss_fn, _ = losses.get("ce")
  batch = _batch(table)
  rng = jax.random.PRNGKey(1)
  outs = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = shd.make_mesh(devices)
    step = make_train_step(loss_fn, cfg.method, mesh, mean=cfg.data.mean, std=cfg.data.std)
    state = shd.replicate(_state(cfg, model, jax.tree.map(jnp.array, variables)), mesh)
    sb = shd.shard_batch(batch, mesh)
    assert len(sb["image"].sharding.device_set) == len(devices)
    state, m = step(state, sb, rng)
    state, m = step(state, sb, rng)
    outs.append((jax.tree.map(np.asarray, state.pytree()), {k: float(v) for k, v in m.items()}))
  (s1, m1), (s4, m4) = outs
  assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-5)
  chex.assert_trees_all_close(s1, s4, rtol=1e-4, atol=1e-5)
  assert int(s4["step"]) == 2


def test_step_compiles_ahead_of_time_and_does_not_retrace(setup):
  cfg, table, model, variables = setup
  mesh = shd.make_mesh()
  loss_fn, _ = losses.get("ce")
  step = make_train_step(loss_fn, cfg.method, mesh, mean=cfg.data.mean, std=cfg.data.std)
  state = shd.replicate(_state(cfg, model, jax.tree.map(jnp.array, variables)), mesh)
  batch = shd.shard_batch(_batch(table), mesh)
  rng = jax.random.PRNGKey(0)
  compiled = step.lower(state, batch, rng).compile()   # ahead-of-time compile check
  assert compiled.cost_analysis() is not None
  for _ in range(3):
    state, m = step(state, batch, rng)
  assert step._cache_size() == 1


def test_weights_scale_the_loss(setup):
  cfg, table, model, variables = setup
  loss_fn, _ = losses.get("ce")
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  b = {"label": jnp.array([0, 0]), "weight": jnp.array([1.0, 3.0])}
  loss, _, _ = loss_fn(logits, b, {}, cfg.method)
  l = -jax.nn.log_softmax(logits)[:, 0]
  assert float(loss) == pytest.approx(float((l[0] + 3 * l[1]) / 2), rel=1e-6)


class Interrupt(Exception):
  pass


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_metrics(tmp_path):
  cfg = toy_config(num_epochs=3)
  table = toy_table()
  full = fit(cfg, table, str(tmp_path / "a"))

  def stop_after_2(epoch, state, entry):
    if epoch == 2:
      raise Interrupt()

  with pytest.raises(Interrupt):
    fit(cfg, table, str(tmp_path / "b"), hooks=[stop_after_2])
  assert not (tmp_path / "b" / "report.json").exists()
  resumed = fit(cfg, table, str(tmp_path / "b"))
  assert resumed["history"] == full["history"]
  assert resumed["test"] == full["test"] and resumed["selected_epoch"] == full["selected_epoch"]
  lines = [json.loads(l) for l in open(tmp_path / "b" / "train.jsonl")]
  assert [l["epoch"] for l in lines] == [1, 2, 3]
  assert os.path.isdir(tmp_path / "b" / "tb")


@pytest.mark.slow
def test_train_set_weights_and_repeats(tmp_path):
  """Repeated rows add steps; a zero weight removes an example from the loss (so all-zero weights and no
  weight decay leave the parameters exactly at their initial values)."""
  cfg = toy_config(num_epochs=1, select="last")
  cfg.optim.weight_decay = 0.0
  table = toy_table()
  idx = table.indices("train")
  steps = []
  hook = lambda epoch, state, entry: steps.append(int(state.step))  # noqa: E731
  ts = TrainSet.from_table(table, np.concatenate([idx, idx[:8]]), np.ones(len(idx) + 8))
  rep = fit(cfg, table, str(tmp_path / "w"), train_set=ts, hooks=[hook])
  assert rep["selected_epoch"] == 1 and steps == [(len(idx) + 8) // cfg.train.batch_size]
  zero = TrainSet.from_table(table, idx, np.zeros(len(idx)))
  fit(cfg, table, str(tmp_path / "z"), train_set=zero)
  from spurjax.train.loop import init_variables, load_best_variables
  _, init = init_variables(cfg, table, jax.random.split(jax.random.PRNGKey(int(cfg.seed)))[0])
  got = load_best_variables(cfg, table, str(tmp_path / "z"))
  for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(init["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = load_best_variables(cfg, table, str(tmp_path / "w"))
  assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 0
             for a, b in zip(jax.tree.leaves(moved["params"]), jax.tree.leaves(init["params"])))


def test_ema_step_moves_the_average_by_its_rule(setup):
  cfg, table, model, variables = setup
  loss_fn, _ = losses.get("ce")
  mesh = shd.make_mesh()
  tx = make_optimizer(cfg.optim, 10, 5)
  state = TrainState.create(apply_fn=model.apply, variables=jax.tree.map(jnp.array, variables), tx=tx, ema=True)
  before = jax.tree.map(np.asarray, state.params)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.ema_params), before)
  step = make_train_step(loss_fn, cfg.method, mesh, mean=cfg.data.mean, std=cfg.data.std, ema_decay=0.9)
  state, _ = step(shd.replicate(state, mesh), shd.shard_batch(_batch(table), mesh), jax.random.PRNGKey(1))
  after = jax.tree.map(np.asarray, state.params)
  want = jax.tree.map(lambda b, a: 0.9 * b + 0.1 * a, before, after)
  chex.assert_trees_all_close(jax.tree.map(np.asarray, state.ema_params), want, rtol=1e-6, atol=1e-7)
  assert any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
  chex.assert_trees_all_close(state.eval_variables["params"], state.ema_params)
  assert "ema_params" in state.pytree()


@pytest.mark.slow
def test_ema_run_resumes_and_keeps_the_average(tmp_path):
  cfg = toy_config(num_epochs=2, select="last")
  cfg.train.ema_decay = 0.5
  table = toy_table()
  finals = []
  full = fit(cfg, table, str(tmp_path / "a"), hooks=[lambda e, s, _: finals.append(s)])
  with pytest.raises(Interrupt):
    fit(cfg, table, str(tmp_path / "b"), hooks=[lambda e, s, _: (_ for _ in ()).throw(Interrupt())])
  resumed = fit(cfg, table, str(tmp_path / "b"))
  assert resumed["history"] == full["history"]
  from spurjax.train.loop import load_best_variables
  got = load_best_variables(cfg, table, str(tmp_path / "a"))
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got["params"]),
                              jax.tree.map(np.asarray, finals[-1].ema_params))
  cfg.train.ema_decay = 1.0
  with pytest.raises(SpurjaxError, match="ema_decay"):
    fit(cfg, table, str(tmp_path / "c"))
  assert not (tmp_path / "c").exists()


def test_interpolation_keeps_the_best_mix_of_start_and_trained_weights(tmp_path, setup):
  """train.interpolate: each epoch scores (1 - a) * start + a * trained on validation and keeps the best."""
  from spurjax.train.loop import load_best_variables, evaluate
  from spurjax.data.pipeline import make_sources
  _, table, model, variables = setup
  cfg = toy_config(num_epochs=2, select="val_avg")
  cfg.train.interpolate = (0.5, 0.25)  # without 1.0, the kept weights are a true mix
  start = jax.tree.map(np.asarray, variables)
  trained = []
  report = fit(cfg, table, str(tmp_path / "w"), init_vars=start,
               hooks=[lambda e, s, _: trained.append(jax.tree.map(np.asarray, s.eval_variables))])
  assert [h["alpha"] in (0.25, 0.5) for h in report["history"]] == [True, True]
  a, e = report["selected_alpha"], report["selected_epoch"]
  got = load_best_variables(cfg, table, str(tmp_path / "w"))
  want = jax.tree.map(lambda s, t: (1 - a) * s + a * t, start, trained[e - 1])
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got), want, rtol=1e-5, atol=1e-6)
  # the reported metrics are those of the kept mix, and no other alpha scored higher that epoch
  mesh = shd.make_mesh()
  ev = evaluate(cfg, model, got, table, make_sources(cfg, table), mesh)
  assert ev["val"]["average_accuracy"] == report["val"]["average_accuracy"]
  assert ev["test"]["worst_group_accuracy"] == report["test"]["worst_group_accuracy"]
  for b in (0.25, 0.5):
    mix = jax.tree.map(lambda s, t: (1 - b) * s + b * t, start, trained[e - 1])
    other = evaluate(cfg, model, mix, table, make_sources(cfg, table), mesh, splits=("val",))
    assert other["val"]["average_accuracy"] <= report["val"]["average_accuracy"]


@pytest.mark.parametrize("interpolate, select, start, match", [
    ((0.0, 1.0), "val_wga", True, "in \\(0, 1\\]"),
    ((1.5,), "val_wga", True, "in \\(0, 1\\]"),
    (("x",), "val_wga", True, "must be a number"),
    ((0.5,), "last", True, "not 'last'"),
    ((0.5,), "val_wga", False, "starting weights"),
])
def test_interpolation_settings_fail_before_anything_is_written(tmp_path, setup, interpolate, select, start, match):
  _, table, _, variables = setup
  cfg = toy_config(num_epochs=1, select=select)
  cfg.train.interpolate = interpolate
  with pytest.raises(SpurjaxError, match=match):
    fit(cfg, table, str(tmp_path / "w"), init_vars=variables if start else None)
  assert not (tmp_path / "w").exists()


def test_selection_ties_go_to_the_higher_validation_average():
  """The criterion decides; among equal criteria the plain validation average accuracy does (no group label)."""
  from spurjax.train.loop import _as_score, selection_score

  def entry(wga, avg, worst_class=0.9):
    return {"epoch": 1, "val": {"worst_group_accuracy": wga, "average_accuracy": avg,
                                "worst_class_accuracy": worst_class}}
  assert selection_score("val_wga", entry(0.9, 0.96)) > selection_score("val_wga", entry(0.9, 0.95))
  assert selection_score("val_wga", entry(0.91, 0.5)) > selection_score("val_wga", entry(0.9, 0.99))
  assert selection_score("val_worst_class", entry(0.1, 0.96, 0.8)) > selection_score("val_worst_class",
                                                                                     entry(0.9, 0.95, 0.8))
  assert selection_score("val_avg", entry(0.1, 0.9)) == selection_score("val_avg", entry(0.9, 0.9))  # no tie-break
  assert selection_score("val_wga", entry(None, 0.9))[0] == -np.inf
  # a best score saved before tie-breaks (a bare number) still compares, below any tie-broken equal score
  assert _as_score(0.9) < selection_score("val_wga", entry(0.9, 0.0)) and _as_score([0.9, 0.5]) == (0.9, 0.5)


def test_fit_selects_the_epoch_with_the_best_criterion_then_average(tmp_path, setup):
  _, table, _, _ = setup
  cfg = toy_config(num_epochs=3, select="val_wga")
  rep = fit(cfg, table, str(tmp_path / "w"))
  keys = [(h["val"]["worst_group_accuracy"], h["val"]["average_accuracy"], -h["epoch"]) for h in rep["history"]]
  assert rep["selected_epoch"] == -max(keys)[2] and rep["tie_break"] == "val average_accuracy"
  from spurjax import report as R
  from spurjax.ddb.report import _section
  assert "(ties: val average_accuracy)" in R.markdown("t", rep) and _section(rep)["tie_break"] == "val average_accuracy"
