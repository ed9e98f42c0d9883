"""`spurjax run` end to end on a tiny benchmark and a tiny diffusion model saved to disk."""
import json
import os

import numpy as np
import pytest

from helpers import write_tiny_pipeline
from spurjax import cli, sharding

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # end-to-end runs: minutes on a CPU


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  return write_tiny_pipeline(tmp_path_factory.mktemp("prior"))


def _args(work, data, prior):
  return ["run", "--config", "configs/synth.py:tiny", "--workdir", str(work), f"--config.data.cache_dir={data}",
          f"--config.diffusion.path={prior}", "--config.ddb.select.k=3", "--config.ddb.invert.steps=2",
          "--config.ddb.inpaint.n_samples=1", "--config.ddb.inpaint.num_steps=2", "--config.ddb.prune.ig_steps=4",
          "--config.ddb.retrain.num_epochs=1", "--config.ddb.retrain.batch_size=16", "--config.ddb.segment.method=given",
          "--config.ddb.retrain.background_weight=2"]


class Killed(Exception):
  pass


def test_run_end_to_end_and_resume(tmp_path, prior_dir, monkeypatch, capsys):
  data = tmp_path / "data"
  rc = cli.main(_args(tmp_path / "a", data, prior_dir))
  assert rc == 0
  stages = "erm, select, segment, invert, inpaint, prune, retrain"
  assert "stages: redid " in capsys.readouterr().out
  rep = json.load(open(tmp_path / "a" / "report.json"))
  for section in ("erm", "ddb"):
    for key in ("worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy", "groups"):
      assert key in rep[section]["test"]
  assert sum(rep["generated_per_class"]) == 2 * 3  # K images per class x (K-1) targets x 1 sample
  assert os.path.isfile(tmp_path / "a" / "prune" / "prune_log.csv")
  assert os.path.isfile(tmp_path / "a" / "plots" / "group_accuracy.png")
  assert "DDB" in open(tmp_path / "a" / "report.md").read()
  assert rep["background_images"] == 2 * 3          # every selected image erased (background_weight > 0)
  assert os.path.isfile(tmp_path / "a" / "retrain" / "backgrounds.png")
  assert "Erased backgrounds" in open(tmp_path / "a" / "report.md").read()
  # The real stages reused as a whole, then a pruning setting redoes pruning and retraining only.
  assert cli.main(_args(tmp_path / "a", data, prior_dir)) == 0
  assert f"stages: reused {stages}\n" in capsys.readouterr().out
  mtime = os.path.getmtime(tmp_path / "a" / "inpaint" / "edits.csv")
  assert cli.main(_args(tmp_path / "a", data, prior_dir) + ["--config.ddb.prune.threshold=1e9"]) == 0
  assert "redid prune (changed ddb.prune.threshold), retrain (upstream prune)" in capsys.readouterr().out
  assert json.load(open(tmp_path / "a" / "report.json"))["kept_per_class"] == [0, 0]
  assert os.path.getmtime(tmp_path / "a" / "inpaint" / "edits.csv") == mtime

  # Killed during the pruning stage, then rerun: the same report.
  from spurjax.ddb.prune import stage as prune_stage
  real = prune_stage.score_edits

  def boom(*a, **k):
    raise Killed()

  monkeypatch.setattr(prune_stage, "score_edits", boom)
  with pytest.raises(Killed):
    cli.main(_args(tmp_path / "b", data, prior_dir))
  assert not (tmp_path / "b" / "report.json").exists()
  monkeypatch.setattr(prune_stage, "score_edits", real)
  assert cli.main(_args(tmp_path / "b", data, prior_dir)) == 0
  rep_b = json.load(open(tmp_path / "b" / "report.json"))
  rep.pop("diffusion_path"), rep_b.pop("diffusion_path")
  assert rep_b == rep


def test_plan_edits_same_class_keeps_the_label():
  from spurjax.ddb.inpaint import Edit, plan_edits
  assert plan_edits([1, 0], 3, 2, same_class=True) == [Edit(0, 1, 1, 0), Edit(0, 1, 1, 1), Edit(1, 0, 0, 0),
                                                       Edit(1, 0, 0, 1)]
  assert all(e.target_class != e.source_class for e in plan_edits([1, 0], 3, 2))


def test_artefact_accuracy_helpers():
  from spurjax.bench import artefact
  assert artefact.class_accuracy(np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]), 3) == [0.5, 0.5, None]
  acc = {"ddb": {"real": {"all": 1.0}, "reinpaint": {"all": 0.75}},
         "erm": {"real": {"all": None}, "reinpaint": {"all": 1.0}}}
  assert artefact.reliance(acc) == {"ddb": 0.25, "erm": None}


def test_bench_artefact_on_a_finished_run(tmp_path, prior_dir, capsys, monkeypatch):
  data, work = tmp_path / "data", tmp_path / "r"
  args = _args(work, data, prior_dir)
  assert cli.main(["bench", "artefact"] + args[1:] + ["--method", "jtt"]) == 2
  assert "--method 'jtt': not a DDB row of bench methods" in capsys.readouterr().err
  assert cli.main(["bench", "artefact"] + args[1:]) == 2          # nothing has run there yet
  assert "r/erm: no finished 'erm' stage (give the run's ERM folder with --erm)" in capsys.readouterr().err
  assert not (work / "artefact").exists()
  assert cli.main(args) == 0
  rep = json.load(open(work / "report.json"))
  assert cli.main(["bench", "artefact"] + args[1:] + ["--erm", str(tmp_path / "nowhere")]) == 2
  assert "nowhere: no finished 'erm' stage (give the run's ERM folder with --erm)" in capsys.readouterr().err
  os.rename(work / "select", tmp_path / "elsewhere_select")   # a stage shared with another run
  assert cli.main(["bench", "artefact"] + args[1:]) == 2
  assert "r/select: no finished 'select' stage" in capsys.readouterr().err
  os.makedirs(tmp_path / "shared")
  os.rename(tmp_path / "elsewhere_select", tmp_path / "shared" / "select")
  shared = ["--shared", str(tmp_path / "shared")]
  # A setting the run was not made with is named, before any work.
  assert cli.main(["bench", "artefact"] + args[1:] + shared + ["--config.ddb.prune.threshold=1e9"]) == 2
  err = capsys.readouterr().err
  assert "prune: the 'prune' stage does not match the config given (changed ddb.prune.threshold)" in err
  assert not (work / "artefact").exists()
  from spurjax.ddb import inpaint
  real, calls = inpaint.make_counterfactuals, []

  def spy(*a, **k):
    out = real(*a, **k)
    calls.append((k.get("same_class"), out["source_class"].tolist(), out["target_class"].tolist()))
    return out

  monkeypatch.setattr(inpaint, "make_counterfactuals", spy)
  assert cli.main(["bench", "artefact"] + args[1:] + shared + ["--n-samples", "2"]) == 0
  assert len(calls) == 1 and calls[0][0] is True and calls[0][1] == calls[0][2] == [0] * 6 + [1] * 6
  out = capsys.readouterr().out
  assert "same-class re-inpaints" in out and "accuracy on real images minus on same-class re-inpaints" in out
  rec = json.load(open(work / "artefact" / "artefact.json"))
  for model in ("erm", "ddb"):
    got = rec["accuracy"][model]
    assert got["real"]["n"] == 2 * 3                        # K = 3 selected images per class
    assert got["reinpaint"]["n"] == 2 * 3 * 2               # x 2 re-inpaints each
    assert got["edit"]["n"] == sum(rep["kept_per_class"])
    for kind in ("real", "reinpaint"):
      assert 0.0 <= got[kind]["all"] <= 1.0 and len(got[kind]["per_class"]) == 2
    assert rec["real_minus_reinpaint"][model] == got["real"]["all"] - got["reinpaint"]["all"]
  # The real images are scored as the run scores its own: ERM on them agrees with a direct prediction.
  from spurjax.config_util import config_from
  from spurjax.context import Context
  from spurjax.data import load_table
  from spurjax.ddb import select
  from spurjax.train import erm, loop
  cfg = config_from("configs/synth.py:tiny", args[args.index("--workdir") + 2:])
  table = load_table(cfg.data)
  ctx = Context(cfg=cfg, workdir=str(work), table=table, mesh=None)
  sel = select.load(ctx, str(tmp_path / "shared" / "select")).selected
  idx = np.concatenate([np.asarray(sel[c]) for c in sorted(sel)])
  e = erm.load(ctx, str(work / "erm"))
  pred = loop.predict(cfg, e.model, e.variables, ctx.sources["eval"], table, idx, sharding.make_mesh()).argmax(-1)
  assert rec["accuracy"]["erm"]["real"]["all"] == pytest.approx(float(np.mean(pred == table.y[idx])))
  assert os.path.isfile(work / "artefact" / "artefact.png")
