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


def test_notebooks_are_valid_python():
  import glob
  books = glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb"))
  assert books
  for path in books:
    nb = json.load(open(path))
    for cell in nb["cells"]:
      if cell["cell_type"] == "code":
        compile("".join(cell["source"]), path, "exec")
