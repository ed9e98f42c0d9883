"""The broad pretraining corpus: balanced objects x scenes, readable, deterministic, disjoint."""
import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from spurjax.data import broad, synth
from spurjax.data.folder import read_folder
from spurjax.errors import SpurjaxError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("broad") / "c"
  broad.generate(str(root), image_size=16, train_per_combo=2, val_per_combo=1, seed=0)
  return root


def _digest(path):
  return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


def test_families_are_many_and_not_the_benchmarks():
  assert len(broad.OBJECT_NAMES) >= 8 and len(broad.SCENE_NAMES) >= 6
  assert not set(broad.OBJECT_NAMES) & set(synth.CLASS_NAMES)
  assert {"land", "water"} <= set(broad.SCENE_NAMES)


def test_every_object_on_every_scene_equally_often(corpus):
  t = read_folder(str(corpus), verify="full")
  k, a = len(broad.OBJECT_NAMES), len(broad.SCENE_NAMES)
  assert t.num_classes == k and t.num_places == a and list(t.class_names) == list(broad.OBJECT_NAMES)
  np.testing.assert_array_equal(t.group_counts("train"), np.full(k * a, 2))
  np.testing.assert_array_equal(t.group_counts("val"), np.full(k * a, 1))
  assert len(t.indices("test")) == 0
  m = t.mask(0)
  assert m.shape == (16, 16) and m.any() and not m.all()


def test_deterministic_and_seed_dependent(tmp_path, corpus):
  broad.generate(str(tmp_path / "same"), image_size=16, train_per_combo=2, val_per_combo=1, seed=0)
  broad.generate(str(tmp_path / "other"), image_size=16, train_per_combo=2, val_per_combo=1, seed=1)
  rows = list(csv.DictReader(open(corpus / "metadata.csv")))
  for r in rows[:10]:
    assert _digest(corpus / r["img_filename"]) == _digest(tmp_path / "same" / r["img_filename"])
  assert any(_digest(corpus / r["img_filename"]) != _digest(tmp_path / "other" / r["img_filename"]) for r in rows[:10])


def test_no_image_shared_with_the_benchmark(tmp_path, corpus):
  synth.generate(str(tmp_path / "bench"), image_size=16, scale=0.01, seed=0, corpus_per_combo=2)
  bench = {_digest(p) for p in (tmp_path / "bench").rglob("images/**/*.png")}
  mine = {_digest(p) for p in corpus.rglob("images/**/*.png")}
  assert bench and mine and not bench & mine


def test_render_varies_and_rejects_bad_input():
  a, ma = broad.render(3, 2, np.random.default_rng(0), 32)
  b, mb = broad.render(3, 2, np.random.default_rng(1), 32)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)
  assert ma.sum() != mb.sum() or not np.array_equal(ma, mb)
  with pytest.raises(SpurjaxError):
    broad.render(len(broad.OBJECT_NAMES), 0, np.random.default_rng(0), 32)
  with pytest.raises(SpurjaxError):
    broad.generate("/tmp/unused-broad", train_per_combo=0)
