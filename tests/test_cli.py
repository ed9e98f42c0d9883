"""`spurjax erm` smoke run on a tiny built-in benchmark."""
import json
import os
import subprocess
import sys

from spurjax import cli


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
  # A finished run is not trained again.
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(work),
                 f"--config.data.cache_dir={tmp_path / 'data'}"])
  assert rc == 0 and json.load(open(work / "report.json")) == rep


def test_console_script_usage():
  out = subprocess.run([sys.executable, "-m", "spurjax.cli", "--help"], capture_output=True, text=True)
  assert out.returncode == 0 and "spurjax erm" in out.stdout.replace("  erm", "spurjax erm")
  bad = subprocess.run([sys.executable, "-m", "spurjax.cli", "frobnicate"], capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_notebooks_are_valid_python():
  import glob
  books = glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb"))
  assert books
  for path in books:
    nb = json.load(open(path))
    for cell in nb["cells"]:
      if cell["cell_type"] == "code":
        compile("".join(cell["source"]), path, "exec")
