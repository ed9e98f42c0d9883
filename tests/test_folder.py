"""Bad input: one-line errors naming the file and row or key, exit code 2, nothing written."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from spurjax import cli
from spurjax.data.folder import read_folder
from spurjax.errors import SpurjaxError

COLS = ["img_id", "img_filename", "y", "split", "place", "mask_filename"]


def make_folder(root, rows=None, size=8):
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  if rows is None:
    rows = []
    for i, (y, place, split) in enumerate([(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 2)]):
      rows.append({"img_id": i, "img_filename": f"img/{i}.png", "y": y, "split": split, "place": place,
                   "mask_filename": f"img/{i}_m.png"})
  for r in rows:
    p = os.path.join(root, r["img_filename"])
    if not os.path.exists(p):
      Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(p)
    mp = os.path.join(root, r["mask_filename"])
    if r["mask_filename"] and not os.path.exists(mp):
      Image.fromarray(np.zeros((size, size), np.uint8)).save(mp)
  write_meta(root, rows)
  return rows


def write_meta(root, rows, cols=COLS):
  with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def test_good_folder(tmp_path):
  make_folder(str(tmp_path))
  t = read_folder(str(tmp_path))
  assert t.num_classes == 2 and t.num_places == 2 and len(t) == 4
  assert t.image(0).shape == (8, 8, 3) and t.mask(0).shape == (8, 8)


def _err(tmp_path, **kw):
  with pytest.raises(SpurjaxError) as e:
    read_folder(str(tmp_path), **kw)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_missing_column(tmp_path):
  rows = make_folder(str(tmp_path))
  write_meta(str(tmp_path), rows, cols=["img_filename", "y", "split"])
  msg = _err(tmp_path)
  assert "metadata.csv" in msg and "'place'" in msg


@pytest.mark.parametrize("col,value,needle", [
    ("y", "bird", "not an integer"), ("y", "-1", "out of range"), ("split", "3", "out of range"),
    ("place", "1.5", "not an integer"), ("split", "x", "not an integer")])
def test_bad_values(tmp_path, col, value, needle):
  rows = make_folder(str(tmp_path))
  rows[2][col] = value
  write_meta(str(tmp_path), rows)
  msg = _err(tmp_path)
  assert "row 4" in msg and f"'{col}'" in msg and needle in msg


def test_label_out_of_declared_range(tmp_path):
  make_folder(str(tmp_path))
  msg = _err(tmp_path, num_classes=1)
  assert "row 3" in msg and "'y'" in msg


def test_missing_image(tmp_path):
  make_folder(str(tmp_path))
  os.remove(tmp_path / "img" / "2.png")
  msg = _err(tmp_path)
  assert "row 4" in msg and "2.png" in msg and "not found" in msg


def test_corrupt_and_truncated_image(tmp_path):
  make_folder(str(tmp_path), size=32)
  (tmp_path / "img" / "1.png").write_bytes(b"not an image at all")
  msg = _err(tmp_path)
  assert "row 3" in msg and "1.png" in msg and "corrupt" in msg
  make_folder(str(tmp_path), size=32)
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / "1.png")
  data = (tmp_path / "img" / "1.png").read_bytes()
  (tmp_path / "img" / "1.png").write_bytes(data[: len(data) // 2])
  msg = _err(tmp_path)
  assert "1.png" in msg and "truncated" in msg


def test_class_without_training_image(tmp_path):
  rows = make_folder(str(tmp_path))
  rows[1]["split"] = 2
  write_meta(str(tmp_path), rows)
  msg = _err(tmp_path)
  assert "class 1 has no training image" in msg


def test_mask_size_mismatch(tmp_path):
  make_folder(str(tmp_path))
  Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "img" / "3_m.png")
  msg = _err(tmp_path)
  assert "row 5" in msg and "3_m.png" in msg and "differs" in msg


def test_cli_exit_code_2_and_nothing_written(tmp_path, capsys):
  data = tmp_path / "data"
  rows = make_folder(str(data))
  rows[0]["y"] = "x"
  write_meta(str(data), rows)
  work = tmp_path / "work"
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(work),
                 "--config.data.kind=folder", f"--config.data.root={data}"])
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert err.count("\n") == 0 and "metadata.csv" in err and "row 2" in err
  assert not work.exists()


def test_cli_bad_override(tmp_path, capsys):
  rc = cli.main(["erm", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "w"),
                 "--config.train.nope=3"])
  assert rc == 2 and "train.nope" in capsys.readouterr().err
  rc = cli.main(["erm", "--config", "configs/missing.py", "--workdir", str(tmp_path / "w")])
  assert rc == 2 and "configs/missing.py" in capsys.readouterr().err
