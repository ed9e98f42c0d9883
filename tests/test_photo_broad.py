"""The real-photograph pretraining corpus: format the pretrain reader takes, pinned families, splits, atomicity."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from spurjax import cli
from spurjax.data import photo_broad, photo_broad_sources, photo_credits, photo_sources
from spurjax.data.photo_sources import Family, Item
from spurjax.errors import SpurjaxError

PKG = "fake-photos"
SIZE = 32
COLOURS = [(250, 20, 20), (20, 20, 250), (240, 220, 20)]


def _object(path, colour, seed):
  rng = np.random.default_rng(seed)
  h, w = 30 + int(rng.integers(20)), 40 + int(rng.integers(20))
  yy, xx = np.mgrid[0:h, 0:w]
  r = ((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.4)) ** 2
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = colour
  rgba[..., 3] = np.round(np.clip((1.2 - r) * 5, 0, 1) * 255).astype(np.uint8)
  Image.fromarray(rgba, "RGBA").save(path)


def _scene(path, colour):
  yy, xx = np.mgrid[0:90, 0:120]
  Image.fromarray(np.clip(np.asarray(colour, np.float32) + 0.3 * (yy + xx)[..., None], 0, 255).astype(np.uint8)
                  ).save(path, quality=95)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pkg"))
  for sub in ("objects", "scenes", os.path.join("usr", "share", "doc", PKG)):
    os.makedirs(os.path.join(root, sub))
  with open(photo_credits.copyright_file(root, PKG), "w") as f:
    f.write("Files: *\nCopyright: 2020 Somebody\nLicense: CC0-1.0\n")
  objs, scenes = [], []
  for c, colour in enumerate(COLOURS):
    items = []
    for i in range(5):
      rel = f"objects/o{c}_{i}.png"
      _object(os.path.join(root, rel), colour, 10 * c + i)
      items.append(Item(PKG, rel, f"thing{c}"))
    objs.append(Family(f"fam {c}", tuple(items)))
  for p, colour in enumerate([(20, 160, 20), (140, 140, 140)]):
    rel = f"scenes/s{p}.jpg"
    _scene(os.path.join(root, rel), colour)
    scenes.append(Family(f"scene{p}", (Item(PKG, rel, f"in place{p}"),)))
  return {PKG: root}, tuple(objs), tuple(scenes)


def _gen(out, sources, **kw):
  roots, objs, scenes = sources
  kw = {"image_size": SIZE, "train_per_family": 8, "val_per_family": 4, "workers": 1, "objects": objs,
        "scenes": scenes, "log": lambda *_: None, **kw}
  return photo_broad.generate(str(out), roots, versions={PKG: "1.0"}, debs={PKG: "/x/fake-photos_1.0_all.deb"}, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sources):
  out = tmp_path_factory.mktemp("c") / "photo_broad"
  return out, _gen(out, sources)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_format_is_what_pretrain_reads(corpus):
  from spurjax.config_util import config_from
  from spurjax.data import load_table
  from spurjax.train import pretrain
  out, info = corpus
  table = load_table(pretrain.pretrain_config(config_from(pretrain.DEFAULT_CONFIG, []), str(out)).data)
  assert table.num_classes == 3 and table.class_names == ["fam 0", "fam 1", "fam 2"]
  assert table.place_names == ["scene0", "scene1"] and table.mask_refs is not None
  assert set(np.unique(table.split)) == {0, 1}
  for split, per in ((0, 8), (1, 4)):
    for y in range(3):
      sel = (table.split == split) & (table.y == y)
      assert sel.sum() == per and np.bincount(table.place[sel], minlength=2).tolist() == [per // 2] * 2
  rows = _rows(out / "metadata.csv")
  assert rows[0]["img_filename"].startswith("images/train/fam-0/")
  img = Image.open(table.refs[0])
  assert img.size == (SIZE, SIZE) and img.mode == "RGB"
  assert np.asarray(Image.open(table.mask_refs[0])).max() == 255
  stats = json.loads((out / "stats.json").read_text())
  assert stats["totals"] == {"train": 24, "val": 12} and stats["families"]["val"]["fam 2"] == 4
  assert stats["source_files"]["fam 0"] == {"train": 4, "val": 1}
  sources_md = (out / "SOURCES.md").read_text()
  assert "objects/o0_0.png" in sources_md and "scenes/s1.jpg" in sources_md
  assert (out / "licenses" / f"{PKG}.copyright").is_file()


def test_val_cutouts_are_held_out(corpus):
  out, info = corpus
  for name, by_split in info["sources"].items():
    assert by_split["val"] and by_split["train"] and not set(by_split["val"]) & set(by_split["train"])
  for row in _rows(out / "metadata.csv"):
    name = info["classes"][int(row["y"])]
    split = photo_broad.SPLITS[int(row["split"])]
    assert row["object_source"] in info["sources"][name][split]


def test_deterministic(tmp_path, corpus, sources):
  out, _ = corpus
  _gen(tmp_path / "again", sources)
  a, b = _rows(out / "metadata.csv"), _rows(tmp_path / "again" / "metadata.csv")
  assert a == b
  for row in a[:5]:
    assert (out / row["img_filename"]).read_bytes() == (tmp_path / "again" / row["img_filename"]).read_bytes()


def test_atomic_output(tmp_path, sources):
  roots, objs, scenes = sources
  broken = Family("broken", (Item(PKG, "objects/missing.png", "x"), Item(PKG, "objects/o0_0.png", "y")))
  with pytest.raises(SpurjaxError, match=f"package {PKG} has no file objects/missing.png"):
    _gen(tmp_path / "out", sources, objects=objs[:2] + (broken,))
  assert os.listdir(tmp_path) == []  # nothing half-written, no temp folder left
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(SpurjaxError, match="not empty"):
    _gen(tmp_path / "full", sources)
  info = _gen(tmp_path / "full", sources, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["full"] and not (tmp_path / "full" / "x").exists()
  assert info["train_per_family"] == 8


def test_pinned_families_are_not_the_benchmarks():
  objects = photo_broad_sources.OBJECTS
  assert 8 <= len(objects) and len({f.name for f in objects}) == len(objects)
  bench = {(it.package, it.path) for f in photo_sources.OBJECTS for it in f.items}
  pinned = [(it.package, it.path) for f in objects for it in f.items]
  assert len(set(pinned)) == len(pinned) and not set(pinned) & bench
  for fam in objects:
    assert len(fam.items) >= photo_broad_sources.MIN_FILES, fam.name
    for it in fam.items:
      assert it.package == photo_sources.STAMPS and it.path.endswith(".png")
      assert not any(w in it.path for w in ("/birds/", "/mammals/", "/marsupials/", "/flowers/", "/cartoon/"))
  assert photo_broad_sources.SCENES == photo_sources.SCENES


def test_bad_arguments(tmp_path, sources):
  with pytest.raises(SpurjaxError, match="image-size"):
    _gen(tmp_path / "o", sources, image_size=8)
  with pytest.raises(SpurjaxError, match="train-per-family"):
    _gen(tmp_path / "o", sources, train_per_family=0)
  assert "photo-broad" in cli.DATA and cli.main(["data", "photo-broad", "--out", str(tmp_path / "x"),
                                                 "--debs", str(tmp_path / "nope")]) == 2
