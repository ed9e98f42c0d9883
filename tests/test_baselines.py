"""Baselines on constructed cases: GroupDRO weights, JTT error set, balancing, DFR, `bench methods` smoke."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import cli
from spurjax.baselines import dfr, hparams, jtt, runner, sampling
from spurjax.bench import methods as bench
from spurjax.errors import SpurjaxError
from spurjax.train import losses
from helpers import toy_config, toy_table


@pytest.fixture(scope="module")
def table():
  return toy_table()


# GroupDRO


def _dro_batch():
  # Group 2 (class 1, place 0) is confidently wrong: the largest loss. Group 3 is absent.
  logits = jnp.array([[2.0, 0.0], [1.5, 0.0], [0.0, 1.0], [3.0, -1.0], [2.5, 0.0], [0.0, 0.5]])
  label = jnp.array([0, 0, 0, 1, 1, 0])
  group = jnp.array([0, 0, 1, 2, 2, 1])
  return logits, {"label": label, "group": group, "weight": jnp.ones(6)}


def test_group_dro_moves_weight_to_the_worst_group():
  cfg = toy_config().method
  cfg.dro_eta = 0.5
  loss_fn, init = losses.get("group_dro")
  state = init(cfg, 4)
  chex.assert_trees_all_close(state["q"], jnp.full(4, 0.25))
  logits, batch = _dro_batch()
  loss, new, aux = loss_fn(logits, batch, state, cfg)
  q, q0 = np.asarray(new["q"]), np.asarray(state["q"])
  assert q[2] > q0[2]
  assert q[0] < q0[0] and q[1] < q0[1]
  assert q[3] == pytest.approx(q0[3])            # absent from the batch: weight kept
  assert q.sum() == pytest.approx(1.0, rel=1e-6)
  per = -np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1))[:, 0]
  g = np.asarray(batch["group"])
  group_loss = np.array([per[g == k].mean() if (g == k).any() else 0.0 for k in range(4)])
  # exponentiated update of the present groups, renormalised to their previous mass (0.75)
  raised = q0[:3] * np.exp(0.5 * group_loss[:3])
  np.testing.assert_allclose(q[:3], 0.75 * raised / raised.sum(), rtol=1e-5)
  assert float(loss) == pytest.approx(float((q * group_loss).sum()), rel=1e-5)
  assert float(aux["dro_max_weight"]) == pytest.approx(q.max(), rel=1e-6)


def test_group_dro_adjustment_needs_counts():
  cfg = toy_config().method
  cfg.dro_adj = 2.0
  _, init = losses.get("group_dro")
  with pytest.raises(SpurjaxError, match="group_counts"):
    init(cfg, 4)
  with cfg.unlocked():
    cfg.group_counts = (100, 4, 1, 25)
  np.testing.assert_allclose(np.asarray(init(cfg, 4)["adj"]), 2.0 / np.sqrt([100, 4, 1, 25]), rtol=1e-6)


# JTT


def test_jtt_error_set_is_exactly_the_misclassified_points(table):
  idx = np.array([3, 7, 8, 12, 20])
  labels = np.array([0, 1, 1, 0, 1])
  logits = np.array([[2., 1.], [3., 0.], [0., 1.], [0., 5.], [1., 1.5]])
  np.testing.assert_array_equal(jtt.error_set(logits, labels, idx), [7, 12])
  ts = jtt.upsampled_train_set(table, np.array([7, 12]), 5.0)
  train = table.indices("train")
  counts = np.bincount(ts.indices, minlength=len(table))
  assert counts[7] == 5 and counts[12] == 5
  assert (counts[np.setdiff1d(train, [7, 12])] == 1).all()
  np.testing.assert_array_equal(ts.labels, table.y[ts.indices])
  with pytest.raises(SpurjaxError):
    jtt.upsampled_train_set(table, np.array([7]), 0.2)


# Balancing


def test_subg_and_suby_sample_equal_counts(table):
  ts = sampling.balanced_train_set(table, "subg", seed=0)
  counts = np.bincount(ts.groups, minlength=4)
  assert (counts == table.group_counts("train").min()).all()
  assert len(np.unique(ts.indices)) == len(ts.indices)
  assert set(ts.indices) <= set(table.indices("train"))
  assert not np.array_equal(ts.indices, sampling.balanced_train_set(table, "subg", seed=1).indices)
  np.testing.assert_array_equal(ts.indices, sampling.balanced_train_set(table, "subg", seed=0).indices)
  y_counts = np.bincount(sampling.balanced_train_set(table, "suby", seed=0).labels, minlength=2)
  assert y_counts[0] == y_counts[1] == 28


def test_groupdro_upsampling_balances_groups_and_keeps_every_example(table):
  ts = sampling.group_upsampled_train_set(table, seed=0)
  assert (np.bincount(ts.groups, minlength=4) == 24).all()
  assert set(ts.indices) == set(table.indices("train"))
  keys = np.array([0] * 5 + [1] * 2 + [2] * 3)
  pos = sampling.balanced_upsample(keys, 4, np.random.default_rng(0))
  assert (np.bincount(keys[pos], minlength=4) == [5, 5, 5, 0]).all()
  reps = np.bincount(pos, minlength=10)
  assert reps[:5].tolist() == [1] * 5 and sorted(reps[5:7]) == [2, 3] and sorted(reps[7:]) == [1, 2, 2]


def test_rwg_and_rwy_weights_equalise_totals(table):
  ts = sampling.balanced_train_set(table, "rwg", seed=0)
  assert len(ts) == len(table.indices("train"))
  assert ts.weights.mean() == pytest.approx(1.0, rel=1e-6)
  totals = np.bincount(ts.groups, weights=ts.weights, minlength=4)
  np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
  rwy = sampling.balanced_train_set(table, "rwy", seed=0)
  totals = np.bincount(rwy.labels, weights=rwy.weights, minlength=2)
  np.testing.assert_allclose(totals, totals[0], rtol=1e-5)


# DFR


def test_dfr_fits_on_group_balanced_subsets(monkeypatch):
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(4), [30, 9, 14, 40])
  y = groups // 2
  x = rng.normal(size=(len(y), 5)).astype(np.float32)
  x[:, 0] += 3.0 * (2 * y - 1)   # the label is linearly readable from feature 0
  seen = []
  real = dfr.balanced_subsample

  def spy(keys, num_keys, r):
    pos = real(keys, num_keys, r)
    seen.append(np.bincount(np.asarray(keys)[pos], minlength=num_keys))
    return pos

  monkeypatch.setattr(dfr, "balanced_subsample", spy)
  grid = (1.0, 0.1, 0.001)
  head, info = dfr.dfr(x, y, groups, 2, 4, grid, subsamples=3, seed=0, iters=300)
  assert len(seen) == len(grid) + 3
  for counts in seen:
    assert (counts == counts[0]).all() and counts[0] > 0
  assert seen[-1][0] == 9            # final fits: the smallest group of the full set
  assert info["C"] in grid and set(info["tune_wga"]) == {str(c) for c in grid}
  assert (head.logits(x).argmax(-1) == y).mean() > 0.95
  # the solver reaches the L1 optimality conditions; a very strong penalty zeroes every weight
  c = 0.05
  w, b = dfr.fit_l1_logreg(x, y, 2, c, iters=300)
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g = x.T @ (p - np.eye(2)[y]) / len(y)
  lam = 1.0 / (c * len(y))
  nz = np.abs(w) > 1e-7
  assert 0 < nz.sum() < w.size
  assert np.where(nz, np.abs(g + lam * np.sign(w)), np.maximum(np.abs(g) - lam, 0)).max() < 1e-4
  assert np.abs((p - np.eye(2)[y]).mean(0)).max() < 1e-4        # unpenalised intercept
  w, _ = dfr.fit_l1_logreg(x, y, 2, 1e-4, iters=300)
  assert np.abs(w).max() < 1e-6


# CLI, hparams


def test_unknown_method_is_a_one_line_error(capsys):
  assert cli.main(["baseline", "--method", "nope", "--config", "configs/synth.py", "--workdir", "/tmp/x"]) == 2
  err = capsys.readouterr().err
  assert "unknown method 'nope'" in err and "groupdro" in err
  with pytest.raises(SpurjaxError, match="unknown method 'foo'"):
    bench.parse_methods("erm,foo")
  with pytest.raises(SpurjaxError, match="twice"):
    bench.parse_methods("erm,jtt,erm")
  assert bench.parse_methods("erm,ddb") == ["erm", "ddb"]


def test_published_settings_then_user_overrides():
  from spurjax.config_util import load_config
  base = load_config("configs/waterbirds.py")
  c = hparams.method_config(base, "jtt", ["--config.method.jtt_lambda=7"])
  assert c.optim.lr == 1e-5 and c.optim.weight_decay == 1.0 and c.method.jtt_epochs == 60
  assert c.method.jtt_lambda == 7.0 and c.method.name == "jtt"
  g = hparams.method_config(load_config("configs/celeba.py"), "groupdro")
  assert g.method.loss == "group_dro" and g.optim.weight_decay == 0.1
  assert hparams.method_config(base, "erm").train.select == "val_avg"
  assert base.method.name == "erm" and base.optim.lr == 1e-3   # the input is not modified


# End to end


@pytest.mark.slow
def test_bench_methods_smoke_and_resume(tmp_path, table, monkeypatch):
  """GroupDRO and DFR through the bench (DFR trains the bench's ERM run first): 2 short fits."""
  cfg = toy_config(num_epochs=1)
  cfg.method.dfr_reg = (1.0, 0.1)
  cfg.method.dfr_subsamples = 2
  w = str(tmp_path / "bench")
  rows = bench.run(cfg, ["groupdro", "dfr"], 1, w, table=table)
  assert [r["method"] for r in rows] == ["groupdro", "dfr"]
  for name in ("methods.md", "methods.csv", "methods.png"):
    assert os.path.getsize(os.path.join(w, name)) > 0
  md = open(os.path.join(w, "methods.md")).read()
  assert "| groupdro | yes/yes | 1 |" in md and "| dfr | no/yes | 1 |" in md
  with open(os.path.join(w, "methods.csv")) as f:
    assert f.readline().startswith("method,train_group_labels,val_group_labels,seeds,worst_group_accuracy_mean")
  first = json.loads(open(os.path.join(w, "groupdro", "seed0", "groupdro.jsonl")).readline())
  assert 0.25 <= first["train/dro_max_weight"] <= 1.0
  erm = json.load(open(os.path.join(w, "erm", "seed0", "report.json")))
  assert erm["selection"] == "val_avg"  # DFR's ERM stage, selected without group labels
  assert json.load(open(os.path.join(w, "erm", "seed0", "stage.json")))["record"]["stage"] == "erm"
  rep = json.load(open(os.path.join(w, "dfr", "seed0", "report.json")))
  assert rep["method"] == "dfr" and rep["val"]["optimistic"] is True
  assert set(rep["test"]) >= {"worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy",
                              "groups"}
  assert rep["dfr"]["erm_workdir"] == os.path.abspath(os.path.join(w, "erm", "seed0"))

  def no_training(*a, **k):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(runner.loop, "fit", no_training)  # the ERM stage trains through it too
  again = bench.run(cfg, ["groupdro", "dfr"], 1, w, table=table)
  assert again == rows


@pytest.mark.slow
def test_jtt_identification_run(tmp_path, table):
  """Stage 1 trains through the trainer (last epoch kept); the saved error set is its training mistakes."""
  cfg = hparams.method_config(toy_config(num_epochs=1), "jtt")
  errors = jtt.identify(cfg, table, str(tmp_path))
  assert json.load(open(tmp_path / "identify" / "report.json"))["selection"] == "last"
  saved = json.load(open(tmp_path / "jtt_error_set.json"))
  assert saved["indices"] == [int(i) for i in errors]
  assert saved["num_train"] == len(table.indices("train"))
  assert set(errors) <= set(table.indices("train"))
  np.testing.assert_array_equal(jtt.identify(cfg, table, str(tmp_path)), errors)   # resumed from the file


def test_ddb_rows_declare_the_group_labels_they_read():
  erm_cfg = hparams.method_config(toy_config(num_epochs=1), "erm")              # the bench's shared ERM run
  labels = {m: bench.ddb_group_labels(bench._with(erm_cfg, s)) for m, s in bench.DDB_VARIANTS.items()}
  assert labels["ddb"] == {"train": "no", "val": "yes"}
  assert labels["ddb_nolabels"] == {"train": "no", "val": "no"}
  assert bench.ddb_group_labels(bench._with(erm_cfg, {"train.select": "val_wga",
                                                     "ddb.retrain.select": "val_worst_class"}))["val"] == "yes"


def test_shared_stage_folders_have_the_same_fingerprint_inputs():
  """A bench methods row that reads another row's stage folders may only share stages whose config values
  and upstream stages are the same under both rows' settings (else it would reuse the wrong artefact)."""
  from spurjax.config_util import config_from
  from spurjax.ddb import inpaint, invert, retrain, segment, select
  from spurjax.ddb.prune import stage as prune_stage
  from spurjax.stages import config_values
  stages = {m.STAGE.name: m.STAGE for m in (select, segment, invert, inpaint, prune_stage, retrain)}
  base = config_from("configs/synth.py:tiny", [])
  assert set(bench.SHARES_STAGES_WITH) == {"ddb_nolabels", "ddb_redraw"}
  for method, (other, shared) in bench.SHARES_STAGES_WITH.items():
    a, b = bench._with(base, bench.DDB_VARIANTS[other]), bench._with(base, bench.DDB_VARIANTS[method])
    for name in shared:
      st = stages[name]
      assert config_values(a, st.config_keys(a)) == config_values(b, st.config_keys(b)), (method, name)
      assert set(st.upstream_of(b)) <= set(shared) | {"erm"}, (method, name)
    later = [s for s in stages if s not in shared]
    assert any(config_values(a, stages[s].config_keys(a)) != config_values(b, stages[s].config_keys(b))
               for s in later), method                                   # the row does differ somewhere
