"""`spurjax erm` smoke run on a tiny built-in benchmark, the console script, and the notebooks run on it."""
import json
import os
import subprocess
import sys

import pytest

from spurjax import cli


@pytest.mark.slow
def test_erm_smoke_on_tiny_synth(tmp_path, capsys):
  work = tmp_path / "work"
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(work),
                 f"--config.data.cache_dir={tmp_path / 'data'}"])
  assert rc == 0
  rep = json.load(open(work / "report.json"))
  for split in ("val", "test"):
    for key in ("worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy", "groups"):
      assert key in rep[split]
    assert len(rep[split]["groups"]) == 4
    assert {"y", "place", "n", "accuracy"} <= set(rep[split]["groups"][0])
    assert rep[split]["worst_group_accuracy"] <= rep[split]["average_accuracy"]
  md = open(work / "report.md").read()
  assert "worst-group acc" in md and "train-weighted" in md
  out = capsys.readouterr().out
  assert "worst-group acc" in out
  assert "stages: redid erm (new)" in out
  # A finished run is not trained again; another setting trains it again.
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(work),
                 f"--config.data.cache_dir={tmp_path / 'data'}"])
  assert rc == 0 and json.load(open(work / "report.json")) == rep
  assert "stages: reused erm" in capsys.readouterr().out
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(work),
                 f"--config.data.cache_dir={tmp_path / 'data'}", "--config.train.num_epochs=1"])
  assert rc == 0 and len(json.load(open(work / "report.json"))["history"]) == 1
  assert "stages: redid erm (changed train.num_epochs)" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_usage_and_one_line_errors(tmp_path):
  def spurjax(*args):
    return subprocess.run([sys.executable, "-m", "spurjax.cli", *args], capture_output=True, text=True)

  out = spurjax("--help")
  listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ") and line.strip()}
  assert out.returncode == 0 and {"run", "erm", "baseline", "invert", "prior", "data", "bench"} <= listed
  for args, needle in ((["frobnicate"], "unknown command 'frobnicate'"),
                       (["bench", "nope"], "expected one of erm"),
                       (["run", "--config", "configs/synth.py", "--workdir", str(tmp_path / "w"), "--frob=1"],
                        "--frob=1"),
                       (["erm", "--config", "configs/synth.py", "--workdir", str(tmp_path / "w"),
                         "--config.train.nope=1"], "unknown config key 'train.nope'")):
    bad = spurjax(*args)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and needle in bad.stderr, bad.stderr
  assert not (tmp_path / "w").exists() and not (tmp_path / "w.tmp").exists()


NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
# Per notebook: the small settings it runs with here (through its SPURJAX_NOTEBOOK_* variables).
NOTEBOOK_SETTINGS = {
    "erm": ["train.num_epochs=1"],
    "ddb": ["train.num_epochs=1", "ddb.select.k=3", "ddb.segment.method=given", "ddb.inpaint.n_samples=1",
            "ddb.inpaint.num_steps=2", "ddb.prune.ig_steps=4", "ddb.retrain.num_epochs=1",
            "ddb.retrain.interpolate=(1.0,)"],
}


def run_notebook(path, tmp_path, monkeypatch, overrides) -> dict:
  """Executes the code cells of `path` in order in one fresh namespace, from the notebook's folder (its
  paths are relative to it), on configs/synth.py:tiny with `overrides`; returns the namespace."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  monkeypatch.chdir(os.path.dirname(path))
  monkeypatch.setenv("SPURJAX_NOTEBOOK_CONFIG", "../configs/synth.py:tiny")
  monkeypatch.setenv("SPURJAX_NOTEBOOK_OVERRIDES", " ".join([f"data.cache_dir={tmp_path / 'data'}", *overrides]))
  monkeypatch.setenv("SPURJAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  ns = {"__name__": "__main__"}
  cells = [c for c in json.load(open(path))["cells"] if c["cell_type"] == "code"]
  assert cells
  try:
    for i, cell in enumerate(cells):
      exec(compile("".join(cell["source"]), f"{path} (code cell {i + 1})", "exec"), ns)
  finally:
    plt.close("all")
  return ns


def test_every_notebook_is_run_here():
  import glob
  books = {os.path.basename(p)[:-len(".ipynb")] for p in glob.glob(os.path.join(NOTEBOOKS, "*.ipynb"))}
  assert books == set(NOTEBOOK_SETTINGS)


@pytest.mark.slow
def test_erm_notebook_runs(tmp_path, monkeypatch, capsys):
  ns = run_notebook(os.path.join(NOTEBOOKS, "erm.ipynb"), tmp_path, monkeypatch, NOTEBOOK_SETTINGS["erm"])
  assert ns["cfg"].data.cache_dir == str(tmp_path / "data") and ns["cfg"].train.num_epochs == 1
  assert len(ns["report"]["history"]) == 1 and len(ns["report"]["test"]["groups"]) == 4
  assert (tmp_path / "work").is_dir() and (tmp_path / "data").is_dir()
  out = capsys.readouterr().out
  assert "train group counts" in out and "worst-group acc" in out


@pytest.mark.slow
def test_ddb_notebook_runs(tmp_path, monkeypatch, capsys):
  from helpers import write_tiny_pipeline
  model = write_tiny_pipeline(tmp_path / "model")   # a one-level model: the shipped prior compiles for a minute
  ns = run_notebook(os.path.join(NOTEBOOKS, "ddb.ipynb"), tmp_path, monkeypatch,
                    [*NOTEBOOK_SETTINGS["ddb"], f"diffusion.path={model}"])
  assert ns["cfg"].ddb.select.k == 3
  assert {n for n, _ in ns["runner"].redone} == {"erm", "select", "segment", "invert", "inpaint", "prune",
                                                  "retrain"}
  for stage in ("erm", "retrain"):
    assert (tmp_path / "work" / stage / "stage.json").is_file()
  assert 0 <= ns["ddb_rep"]["test"]["worst_group_accuracy"] <= 1
  assert "WGA ERM" in capsys.readouterr().out
