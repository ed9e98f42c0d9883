"""The real-photograph benchmark: composition, splits, counts, corpus, sources, .deb handling, errors."""
import csv
import json
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
from PIL import Image

from spurjax import cli
from spurjax.data import compose, debian, photo_credits, photo_sources, photos
from spurjax.data.folder import read_folder
from spurjax.data.photo_sources import Family, Item
from spurjax.errors import SpurjaxError

PKG = "fake-photos"
SIZE = 32
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Somebody
License: GPL-2+

Files: scenes/s0_*.jpg
Copyright: 2021 A. Photographer
License: CC0-1.0
"""


def _object(path, colour, seed):
  """An RGBA cut-out: an opaque ellipse of one colour with a soft edge on a transparent canvas."""
  rng = np.random.default_rng(seed)
  h, w = 40 + int(rng.integers(20)), 50 + int(rng.integers(20))
  yy, xx = np.mgrid[0:h, 0:w]
  r = ((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.4)) ** 2
  alpha = np.clip((1.2 - r) * 5, 0, 1)
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = colour
  rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
  Image.fromarray(rgba, "RGBA").save(path)


def _scene(path, colour):
  yy, xx = np.mgrid[0:90, 0:120]
  rgb = np.clip(np.asarray(colour, np.float32) + 0.3 * (yy + xx)[..., None], 0, 255).astype(np.uint8)
  Image.fromarray(rgb).save(path, quality=95)


def _families(root, n_obj=5, n_scene=5):
  """Two object and two scene families of synthetic files under `root` (one package)."""
  os.makedirs(os.path.join(root, "objects"), exist_ok=True)
  os.makedirs(os.path.join(root, "scenes"), exist_ok=True)
  os.makedirs(os.path.join(root, "usr", "share", "doc", PKG), exist_ok=True)
  with open(photo_credits.copyright_file(root, PKG), "w") as f:
    f.write(COPYRIGHT)
  objs, scenes = [], []
  for c, colour in enumerate([(250, 20, 20), (20, 20, 250)]):
    items = []
    for i in range(n_obj):
      rel = f"objects/o{c}_{i}.png"
      _object(os.path.join(root, rel), colour, 10 * c + i)
      items.append(Item(PKG, rel, f"thing{c}"))
    objs.append(Family(f"obj{c}", tuple(items)))
  for p, colour in enumerate([(20, 160, 20), (140, 140, 140)]):
    items = []
    for i in range(n_scene):
      rel = f"scenes/s{p}_{i}.jpg"
      _scene(os.path.join(root, rel), colour)
      items.append(Item(PKG, rel, f"in place{p}"))
    scenes.append(Family(f"scene{p}", tuple(items)))
  return tuple(objs), tuple(scenes)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pkg"))
  objs, scenes = _families(root)
  return {PKG: root}, objs, scenes


def _gen(out, sources, **kw):
  roots, objs, scenes = sources
  kw = {"image_size": SIZE, "train": 60, "val_per_group": 2, "test_per_group": 3, "corpus_per_combo": 2,
        "workers": 1, "objects": objs, "scenes": scenes, "log": lambda *_: None, **kw}
  return photos.generate(str(out), roots, versions={PKG: "1.0"}, debs={PKG: "/x/fake-photos_1.0_all.deb"}, **kw)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bench(tmp_path_factory, sources):
  out = tmp_path_factory.mktemp("b") / "photos"
  info = _gen(out, sources)
  return out, info


def test_counts_majority_and_format(bench):
  out, info = bench
  table = read_folder(str(out), verify="full")
  assert table.class_names == ["obj0", "obj1"] and table.place_names == ["scene0", "scene1"]
  assert table.mask_refs is not None and table.captions is not None
  stats = json.loads((out / "stats.json").read_text())
  expected = {"train": photos.train_counts(60, 0.95).tolist(), "val": [2] * 4, "test": [3] * 4}
  for split_id, split in enumerate(photos.SPLITS):
    got = [int(np.sum((table.split == split_id) & (table.y * 2 + table.place == g))) for g in range(4)]
    assert got == expected[split] == list(stats["groups"][split].values())
  train = np.asarray(expected["train"]).reshape(2, 2)
  assert train[0, 0] / train[0].sum() == pytest.approx(stats["train_majority_fraction"]["obj0"])
  assert abs(train[0, 0] / train[0].sum() - 0.95) < 0.05 and abs(train[1, 1] / train[1].sum() - 0.95) < 0.1
  img = Image.open(table.refs[0])
  assert img.size == (SIZE, SIZE) and img.mode == "RGB"
  assert table.captions[0].startswith("a photo of a thing0 in place")


def test_train_counts_follow_waterbirds():
  c = photos.train_counts(4000, 0.95)
  assert c.tolist() == [2918, 154, 46, 882] and c.sum() == 4000
  assert photos.train_counts(4795, 0.95).tolist() == [3498, 184, 56, 1057]  # Waterbirds itself
  with pytest.raises(SpurjaxError, match="majority"):
    photos.train_counts(100, 0.3)


def test_eval_sources_disjoint_from_train(bench):
  out, info = bench
  for name, by_split in info["sources"].items():
    train, val, test = (set(by_split[s]) for s in photos.SPLITS)
    assert train and val and test and not (train & val) and not (train & test) and not (val & test), name
  used = {s: set() for s in photos.SPLITS}
  for r in _rows(out / "metadata.csv"):
    split = photos.SPLITS[int(r["split"])]
    used[split] |= {r["object_source"], r["scene_source"]}
  for split in photos.SPLITS:
    allowed = set().union(*(by_split[split] for by_split in info["sources"].values()))
    assert used[split] <= allowed
  assert not (used["train"] & (used["val"] | used["test"]))


def test_corpus_balanced_without_masks(bench):
  out, _ = bench
  with open(out / "corpus" / "metadata.csv", newline="") as f:
    header = next(csv.reader(f))
  assert header == ["file_name", "text"]
  rows = _rows(out / "corpus" / "metadata.csv")
  assert len(rows) == 8 and not (out / "corpus" / "masks").exists()
  assert sum("thing0" in r["text"] for r in rows) == 4 and sum("thing1" in r["text"] for r in rows) == 4
  assert sum("in place0" in r["text"] for r in rows) == 4
  for r in rows:
    assert Image.open(out / "corpus" / r["file_name"]).size == (SIZE, SIZE)


def test_sources_md_and_licenses(bench):
  out, _ = bench
  text = (out / "SOURCES.md").read_text()
  assert "| fake-photos | 1.0 | fake-photos_1.0_all.deb | 20 |" in text
  assert "A. Photographer; License: CC0-1.0" in text and "Somebody; License: GPL-2+" in text
  assert (out / "licenses" / f"{PKG}.copyright").read_text() == COPYRIGHT


def test_masks_match_alpha_placement():
  obj = np.zeros((20, 30, 4), np.uint8)
  obj[..., 0] = 255
  obj[2:18, 3:27, 3] = 255  # an opaque red rectangle with a transparent border
  cut = Image.fromarray(obj, "RGBA")
  background = Image.new("RGB", (100, 80), (0, 200, 0))
  rng = np.random.default_rng(3)
  image, mask = compose.compose(background, cut.crop(cut.getchannel("A").getbbox()), rng, 64)
  assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
  assert 0.35 * 64 <= max(np.ptp(np.nonzero(mask)[0]), np.ptp(np.nonzero(mask)[1])) + 1 <= 0.65 * 64 + 1
  assert np.all(image[mask][:, 0] > 127) and np.all(image[mask][:, 1] < 128)
  assert np.all(image[~mask][:, 0] < 128) and np.all(image[~mask][:, 1] > 100)
  ys, xs = np.nonzero(mask)
  assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one solid rectangle


def test_deterministic(tmp_path, sources):
  _gen(tmp_path / "a", sources, train=12, corpus_per_combo=1)
  _gen(tmp_path / "b", sources, train=12, corpus_per_combo=1)
  ra, rb = _rows(tmp_path / "a" / "metadata.csv"), _rows(tmp_path / "b" / "metadata.csv")
  assert ra == rb
  for r in ra[:6]:
    a, b = Image.open(tmp_path / "a" / r["img_filename"]), Image.open(tmp_path / "b" / r["img_filename"])
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_missing_file_is_one_line_error(tmp_path, sources):
  roots, objs, scenes = sources
  broken = Family(objs[0].name, objs[0].items + (Item(PKG, "objects/absent.png", "x"),))
  with pytest.raises(SpurjaxError, match="package fake-photos has no file objects/absent.png") as e:
    _gen(tmp_path / "out", sources, objects=(broken, objs[1]))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "out") and os.listdir(tmp_path) == []


def test_failure_leaves_nothing(tmp_path, sources, monkeypatch):
  real, calls = compose.compose, []

  def failing(*a, **k):
    calls.append(1)
    if len(calls) > 5:
      raise RuntimeError("boom")
    return real(*a, **k)

  monkeypatch.setattr(compose, "compose", failing)
  with pytest.raises(RuntimeError):
    _gen(tmp_path / "out", sources)
  assert os.listdir(tmp_path) == []


def test_debs_folder_without_debs(tmp_path, capsys):
  empty = tmp_path / "debs"
  empty.mkdir()
  rc = cli.main(["data", "photos", "--out", str(tmp_path / "out"), "--debs", str(empty),
                 "--cache", str(tmp_path / "cache")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1
  assert err.startswith("spurjax: error: photos: no tuxpaint-stamps-default_*.deb in --debs folder")
  assert "--debs DIR" in err and not (tmp_path / "out").exists()


def test_apt_get_missing(tmp_path, monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(SpurjaxError, match="apt-get not found, cannot download package some-pkg.*--debs DIR"):
    debian.fetch(["some-pkg"], str(tmp_path / "cache"))


def test_apt_get_failure(tmp_path, monkeypatch):
  fake = tmp_path / "apt-get"
  fake.write_text("#!/bin/sh\necho 'E: Unable to locate package some-pkg' >&2\nexit 100\n")
  fake.chmod(0o755)
  monkeypatch.setattr(shutil, "which", lambda name: str(fake) if name == "apt-get" else None)
  with pytest.raises(SpurjaxError, match=r"apt-get download some-pkg failed \(E: Unable to locate package"):
    debian.fetch(["some-pkg"], str(tmp_path / "cache"))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_unpacks_a_deb_from_debs_folder(tmp_path):
  tree = tmp_path / "tree"
  (tree / "DEBIAN").mkdir(parents=True)
  (tree / "DEBIAN" / "control").write_text(
      "Package: fake-photos\nVersion: 2.5-1\nArchitecture: all\nMaintainer: x <x@example.org>\nDescription: test\n")
  (tree / "usr" / "share").mkdir(parents=True)
  (tree / "usr" / "share" / "a.txt").write_text("hello")
  debs = tmp_path / "debs"
  debs.mkdir()
  subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(debs / "fake-photos_2.5-1_all.deb")],
                 check=True, capture_output=True)
  roots, versions, found = photos.sources_from_debian(str(tmp_path / "cache"), str(debs), ["fake-photos"],
                                                      log=lambda *_: None)
  assert versions == {"fake-photos": "2.5-1"}
  assert open(os.path.join(roots["fake-photos"], "usr/share/a.txt")).read() == "hello"
  assert debian.unpack(found["fake-photos"], str(tmp_path / "cache")) == roots["fake-photos"]  # unpacked once
  with pytest.raises(SpurjaxError, match="package fake-photos has no file usr/share/b.png"):
    photo_sources.locate(Item("fake-photos", "usr/share/b.png", "x"), roots)


def test_pinned_catalogue():
  paths = [it.path for fam in photo_sources.OBJECTS + photo_sources.SCENES for it in fam.items]
  assert len(paths) == len(set(paths))
  assert all("bird" not in p for p in paths)
  assert all(len(f.items) >= 10 for f in photo_sources.OBJECTS + photo_sources.SCENES)
  assert [f.name for f in photo_sources.OBJECTS] == ["animal", "flower"]
  assert set(photo_sources.packages_of(photo_sources.OBJECTS + photo_sources.SCENES)) == set(photo_sources.PACKAGES)


def _online() -> bool:
  if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
    return False
  try:
    socket.create_connection(("deb.debian.org", 80), timeout=5).close()
    return True
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _online(), reason="needs apt-get, dpkg-deb and a package mirror")
def test_real_packages(tmp_path):
  """Downloads the pinned packages (about 290 MB) and writes a small benchmark from them."""
  rc = photos.main(["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--train", "40",
                    "--val-per-group", "2", "--test-per-group", "2", "--corpus-per-combo", "2", "--workers", "1"])
  assert rc == 0
  table = read_folder(str(tmp_path / "out"), verify="full")
  assert table.class_names == ["animal", "flower"] and table.place_names == ["foliage", "man-made"]
  text = (tmp_path / "out" / "SOURCES.md").read_text()
  assert "CC-BY-4.0" in text and "tuxpaint-stamps-default" in text


@pytest.mark.parametrize("command, args, message", [
    ("photos", ["--majority", "2"], "--majority"), ("photos", ["--train", "2"], "--train"),
    ("photos", ["--image-size", "x"], "--image-size"), ("photo-broad", ["--train-per-family", "0"], "--train-per-family"),
    ("photo-broad", ["--image-size", "8"], "--image-size")])
def test_bad_settings_stop_before_any_package_is_fetched(tmp_path, monkeypatch, capsys, command, args, message):
  from spurjax.data import debian
  monkeypatch.setattr(debian, "fetch", lambda *a, **k: pytest.fail("fetched packages despite bad settings"))
  rc = cli.main(["data", command, "--out", str(tmp_path / "out"), *args])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and message in err and "\n" not in err
  assert not (tmp_path / "out").exists()
