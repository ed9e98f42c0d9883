"""`spurjax bench methods` honours `--config.key=value` overrides, the dataset included."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from spurjax import cli
from spurjax.data.folder import read_folder
from spurjax.stages import table_digest
from helpers import toy_table


def write_folder(root, table):
  """`table` as a folder dataset (metadata.csv + PNGs)."""
  os.makedirs(os.path.join(root, "img"))
  with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["img_filename", "y", "split", "place"])
    for i in range(len(table)):
      Image.fromarray(table.image(i)).save(os.path.join(root, "img", f"{i}.png"))
      w.writerow([f"img/{i}.png", int(table.y[i]), int(table.split[i]), int(table.place[i])])


@pytest.mark.slow
def test_bench_methods_runs_on_the_dataset_the_overrides_name(tmp_path, capsys):
  root = str(tmp_path / "toyfolder")
  write_folder(root, toy_table(n_per_group=(10, 3, 3, 10), val=3, test=5))
  folder = read_folder(root)
  w, cache = tmp_path / "bench", tmp_path / "cache"
  rc = cli.main(["bench", "methods", "--config", "configs/synth.py:tiny", "--methods", "erm", "--seeds", "1",
                 "--workdir", str(w), "--config.data.kind=folder", f"--config.data.root={root}",
                 f"--config.data.cache_dir={cache}", "--config.train.num_epochs=1"])
  assert rc == 0
  assert not cache.exists()                                  # the built-in benchmark was never generated
  md = open(w / "methods.md").read()
  assert md.startswith("# Methods on toyfolder\n") and "| erm | no/no | 1 |" in md
  stage = json.load(open(w / "erm" / "seed0" / "stage.json"))["record"]
  assert stage["data"]["table"] == table_digest(folder)
  rep = json.load(open(w / "erm" / "seed0" / "report.json"))
  assert len(rep["history"]) == 1                            # --config.train.num_epochs=1 too
  for split, n in (("val", 3), ("test", 5)):
    assert [g["n"] for g in rep[split]["groups"]] == [n] * 4
  assert sum(g["n"] for g in rep["test"]["groups"]) == int(np.sum(folder.split == 2)) == 20
  assert "ERM on toyfolder" in open(w / "erm" / "seed0" / "report.md").read()
  assert "[bench methods] erm seed 0" in capsys.readouterr().out
