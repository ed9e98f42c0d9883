"""The built-in benchmark generator: counts, files, corpus, determinism, atomic writes."""
import csv
import hashlib
import json

import chex
import numpy as np
import pytest
from PIL import Image

from spurjax.data import synth
from spurjax.data.drawing import CORPUS_STREAM, image_rng
from spurjax.data.folder import read_folder
from spurjax.errors import SpurjaxError

SCALE, SIZE, CORPUS = 0.02, 32, 3


def _gen(path, seed=0, **kw):
  kw = {"image_size": SIZE, "scale": SCALE, "seed": seed, "corpus_per_combo": CORPUS, "workers": 1, **kw}
  return synth.generate(str(path), **kw)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _digest(path):
  return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth") / "a"
  _gen(root)
  return root


def test_counts_scale_one_are_waterbirds():
  c = synth.split_counts(1.0)
  np.testing.assert_array_equal(c["train"], [3498, 184, 56, 1057])
  np.testing.assert_allclose(synth.majority_fraction(c["train"]), [0.95, 0.95], atol=0.002)
  assert c["val"].tolist() == [150] * 4 and c["test"].tolist() == [300] * 4
  tiny = synth.split_counts(1e-4)
  assert all((v >= 1).all() for v in tiny.values())
  with pytest.raises(SpurjaxError):
    synth.split_counts(0.0)


def test_group_counts_exact(ds):
  expected = synth.split_counts(SCALE)
  table = read_folder(str(ds), verify="full")
  assert table.num_classes == 2 and table.num_places == 2
  assert list(table.class_names) == ["bird", "flower"] and list(table.place_names) == ["land", "water"]
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(table.group_counts(split), expected[split])
  info = json.loads((ds / "classes.json").read_text())
  assert info["counts"]["train"] == expected["train"].tolist()


def test_images_masks_captions(ds):
  rows = _rows(ds / "metadata.csv")
  assert list(rows[0]) == ["img_id", "img_filename", "y", "split", "place", "mask_filename", "caption"]
  split_names = {"0": "train", "1": "val", "2": "test"}
  for r in rows:
    y, place = int(r["y"]), int(r["place"])
    group = f"{synth.CLASS_NAMES[y]}_{synth.PLACE_NAMES[place]}"
    assert r["img_filename"] == f"images/{split_names[r['split']]}/{group}/{int(r['img_id']):06d}.png"
    image = np.asarray(Image.open(ds / r["img_filename"]))
    mask = np.asarray(Image.open(ds / r["mask_filename"]))
    chex.assert_shape(image, (SIZE, SIZE, 3))
    chex.assert_shape(mask, (SIZE, SIZE))
    assert set(np.unique(mask).tolist()) <= {0, 255}
    frac = (mask > 0).mean()
    assert 0.02 < frac < 0.6, frac
    assert r["caption"] == f"a photo of a {synth.CLASS_NAMES[y]} on {synth.PLACE_NAMES[place]}"


def test_corpus_balanced_and_disjoint(ds):
  rows = _rows(ds / "corpus" / "metadata.csv")
  assert list(rows[0])[:2] == ["file_name", "text"]
  combos = [(int(r["y"]), int(r["place"])) for r in rows]
  assert sorted(combos) == sorted([(y, p) for y in (0, 1) for p in (0, 1)] * CORPUS)
  for r in rows:
    y, place = int(r["y"]), int(r["place"])
    assert f"{synth.CLASS_NAMES[y]} on {synth.PLACE_NAMES[place]}" in r["text"]
    assert synth.CLASS_NAMES[1 - y] not in r["text"]
  corpus = {_digest(ds / "corpus" / r["file_name"]) for r in rows}
  bench = {_digest(ds / r["img_filename"]) for r in _rows(ds / "metadata.csv")}
  assert len(corpus) == len(rows)
  assert not corpus & bench


def test_corpus_object_masks(ds):
  rows = _rows(ds / "corpus" / "metadata.csv")
  assert list(rows[0]) == ["file_name", "text", "y", "place", synth.CORPUS_MASK_COLUMN]
  for index, r in enumerate(rows):
    mask = np.asarray(Image.open(ds / "corpus" / r[synth.CORPUS_MASK_COLUMN]))
    chex.assert_shape(mask, (SIZE, SIZE))
    assert set(np.unique(mask).tolist()) <= {0, 255}
    # The mask is the one drawn with this image (same random stream).
    image, expected = synth.render(int(r["y"]), int(r["place"]), image_rng(0, CORPUS_STREAM, index), SIZE)
    np.testing.assert_array_equal(np.asarray(Image.open(ds / "corpus" / r["file_name"])), image)
    np.testing.assert_array_equal(mask > 0, expected)


def test_deterministic_per_seed(ds, tmp_path):
  _gen(tmp_path / "same")
  _gen(tmp_path / "other", seed=1, corpus_per_combo=0)
  files = sorted(p.relative_to(ds) for p in ds.rglob("*") if p.is_file())
  same = sorted(p.relative_to(tmp_path / "same") for p in (tmp_path / "same").rglob("*") if p.is_file())
  assert files == same
  for f in files:
    assert (ds / f).read_bytes() == (tmp_path / "same" / f).read_bytes(), f
  assert not (tmp_path / "other" / "corpus").exists()
  first = _rows(ds / "metadata.csv")[0]["img_filename"]
  assert (ds / first).read_bytes() != (tmp_path / "other" / first).read_bytes()


def test_render_is_pure():
  for y in (0, 1):
    for place in (0, 1):
      a, ma = synth.render(y, place, np.random.default_rng(7), 24)
      b, mb = synth.render(y, place, np.random.default_rng(7), 24)
      chex.assert_shape(a, (24, 24, 3))
      assert a.dtype == np.uint8 and ma.dtype == bool and ma.any()
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(ma, mb)
  with pytest.raises(SpurjaxError):
    synth.render(2, 0, np.random.default_rng(0), 24)


def test_background_is_the_easy_cue():
  """Mean image colour predicts the place almost perfectly; object colour says little about the class."""
  rng = np.random.default_rng(0)
  img_feat, obj_feat, ys, places = [], [], [], []
  for i in range(160):
    y, place = i % 2, (i // 2) % 2
    image, mask = synth.render(y, place, rng, 24)
    img_feat.append(image.reshape(-1, 3).mean(0))
    obj_feat.append(image[mask].mean(0))
    ys.append(y)
    places.append(place)
  img_feat, obj_feat = np.asarray(img_feat), np.asarray(obj_feat)
  ys, places = np.asarray(ys), np.asarray(places)

  def centroid_acc(x, labels):  # fit on the first half, score on the second
    half = len(labels) // 2
    mu = np.stack([x[:half][labels[:half] == c].mean(0) for c in (0, 1)])
    pred = np.argmin(((x[half:, None] - mu[None]) ** 2).sum(-1), axis=1)
    return (pred == labels[half:]).mean()

  assert centroid_acc(img_feat, places) >= 0.95
  assert centroid_acc(obj_feat, ys) <= 0.75


def test_existing_output_refused_and_overwrite(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  _gen(out, scale=0.001, corpus_per_combo=0)  # an empty folder is fine
  with pytest.raises(SpurjaxError, match="not empty"):
    _gen(out, scale=0.001, corpus_per_combo=0)
  _gen(out, scale=0.001, corpus_per_combo=1, overwrite=True)
  assert (out / "corpus" / "metadata.csv").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("killed")

  monkeypatch.setattr(synth, "_write_corpus", boom)
  with pytest.raises(RuntimeError):
    _gen(tmp_path / "out", scale=0.001)
  assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
  out = tmp_path / "cli"
  assert synth.main(["--out", str(out), "--scale", "0.001", "--image-size", "16", "--no-corpus",
                     "--workers", "1"]) == 0
  assert "wrote 14 images" in capsys.readouterr().out
  assert (out / "metadata.csv").exists() and not (out / "corpus").exists()
  assert np.asarray(Image.open(next((out / "images" / "test").rglob("*.png")))).shape == (16, 16, 3)
  with pytest.raises(SpurjaxError):
    synth.main(["--out", str(out), "--scale", "0.001", "--image-size", "16"])


def test_redraw_keeps_the_scene_and_swaps_the_object(ds):
  """`redraw` draws a benchmark image again: with its own class and stream it is the file itself; with the
  other class only the old and new objects' pixels change (and thin antialiased parts, legs and stems, that
  cover under half a pixel and so are outside the masks, within 2 px of them)."""
  from spurjax.ddb.inpaint.paste import dilate
  rows = [r for r in _rows(ds / "metadata.csv") if r["split"] == "0"][:6]
  for r in rows:
    info, index = synth.image_origin(str(ds / r["img_filename"]))
    assert index == int(r["img_id"]) and info["seed"] == 0
    y, place = int(r["y"]), int(r["place"])
    own, old = synth.redraw(info, index, y, place)
    np.testing.assert_array_equal(own, np.asarray(Image.open(ds / r["img_filename"]).convert("RGB")))
    np.testing.assert_array_equal(old, np.asarray(Image.open(ds / r["mask_filename"])) > 127)
    swapped, new = synth.redraw(info, index, 1 - y, place, (5, index))
    chex.assert_shape(swapped, (SIZE, SIZE, 3))
    chex.assert_shape(new, (SIZE, SIZE))
    outside = ~dilate(old | new, 2)
    np.testing.assert_array_equal(swapped[outside], own[outside])
    assert new.any() and (swapped[new] != own[new]).any()
    np.testing.assert_array_equal(synth.redraw(info, index, 1 - y, place, (5, index))[0], swapped)
    assert not np.array_equal(synth.redraw(info, index, 1 - y, place, (6, index))[0], swapped)


def test_redraw_refuses_other_data(ds, tmp_path):
  with pytest.raises(SpurjaxError, match="not an image of a benchmark"):
    synth.image_origin(str(tmp_path / "images" / "train" / "x" / "000001.png"))
  with pytest.raises(SpurjaxError, match="not an image of a benchmark"):
    synth.image_origin(str(ds / "images" / "train" / "bird_land" / "cat.png"))
  with pytest.raises(SpurjaxError, match="redraw needs a benchmark"):
    synth.redraw({"generator": "spurjax.data.broad", "seed": 0, "image_size": 32}, 1, 0, 0)
