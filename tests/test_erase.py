"""Erased backgrounds: the object's pixels refilled from the scene, one row per class label, weighted in retraining."""
import numpy as np
import pytest

from helpers import toy_table
from spurjax.data.table import GENERATED, Table, concat
from spurjax.ddb.retrain.erase import background_table, erase_object
from spurjax.ddb.retrain import retrain_set
from spurjax.errors import SpurjaxError


def _scene(h=32, w=32):
  """Horizontal blue stripes (a 'water' texture) with a red 6x8 object at rows 12-17, cols 10-17."""
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 2] = 120 + 60 * (np.arange(h)[:, None] % 4 < 2)
  obj = np.zeros((h, w), bool)
  obj[12:18, 10:18] = True
  img[obj] = (230, 20, 20)
  return img, obj


def test_erase_refills_the_object_from_the_scene_and_leaves_the_rest():
  img, obj = _scene()
  out = erase_object(img, obj, grow=1)
  grown = np.zeros_like(obj)
  grown[11:19, 9:19] = True
  np.testing.assert_array_equal(out[~grown], img[~grown])          # outside the grown mask: untouched
  assert not np.any(np.all(out == (230, 20, 20), axis=-1))         # no object pixel left
  # shifted by the object's width along the stripes, so each filled row keeps its stripe colour
  np.testing.assert_array_equal(out[grown][:, 2], np.broadcast_to(img[:, :1, 2], obj.shape)[grown])
  assert out.dtype == img.dtype and out.shape == img.shape


def test_erase_falls_back_to_the_nearest_scene_pixel_and_rejects_bad_masks():
  img, _ = _scene(8, 8)
  wide = np.zeros((8, 8), bool)
  wide[2:6, :] = True                        # no shift lands outside a full-width band sideways
  out = erase_object(img, wide, grow=0)
  np.testing.assert_array_equal(out[~wide], img[~wide])
  assert np.all(np.isin(out[wide][:, 2], np.unique(img[~wide][:, 2])))
  np.testing.assert_array_equal(erase_object(img, np.zeros((8, 8), bool)), img)
  with pytest.raises(SpurjaxError, match="whole image"):
    erase_object(img, np.ones((8, 8), bool))
  with pytest.raises(SpurjaxError, match="mask shape"):
    erase_object(img, np.zeros((4, 4), bool))


def test_background_table_has_one_row_per_class_and_no_group_label():
  table = toy_table()
  img, obj = _scene()
  bg = background_table(table, {7: img, 3: img[::-1]}, {7: obj, 3: obj[::-1]}, grow=1)
  k = table.num_classes
  assert len(bg) == 2 * k
  np.testing.assert_array_equal(bg.y, np.tile(np.arange(k), 2))
  assert np.all(bg.place == 0) and np.all(bg.split == GENERATED)
  np.testing.assert_array_equal(bg.image(0), erase_object(img[::-1], obj[::-1], 1))   # sorted: index 3 first
  np.testing.assert_array_equal(bg.image(k), erase_object(img, obj, 1))
  with pytest.raises(SpurjaxError, match="table index 5"):
    background_table(table, {}, {5: obj})
  # nothing to erase (the object would stay under every label) or no scene left: skipped
  full = np.ones_like(obj)
  full[0, 0] = False                          # whole once grown by 1 px
  bg = background_table(table, {1: img, 2: img, 7: img}, {1: np.zeros_like(obj), 2: full, 7: obj}, grow=1)
  assert len(bg) == k
  np.testing.assert_array_equal(bg.image(0), erase_object(img, obj, 1))


def test_retrain_set_repeats_backgrounds_like_the_edits_at_their_weight():
  table = toy_table()
  img, obj = _scene()
  from test_retrain import _gen
  edits = concat(table, _gen((2, 3)), second_split=GENERATED)
  bg = background_table(table, {0: img}, {0: obj})
  both = concat(edits, bg, second_split=GENERATED)
  plain = retrain_set(edits, len(table), (2.0, 2.0), 0.5)
  ts = retrain_set(both, len(table), (2.0, 2.0), 0.5, background_start=len(edits), background_weight=0.7)
  n_train = len(table.indices("train"))
  reps = round(n_train / 5)
  is_bg = ts.indices >= len(edits)
  is_edit = (ts.indices >= len(table)) & ~is_bg
  assert is_edit.sum() == 5 * reps == (plain.indices >= len(table)).sum()   # the edits keep their exposure
  assert is_bg.sum() == 2 * reps and np.all(ts.weights[is_bg] == np.float32(0.7))
  np.testing.assert_array_equal(np.bincount(ts.labels[is_bg]), [reps, reps])   # each scene under both labels
  np.testing.assert_array_equal(ts.weights[is_edit], 2.0)


def test_retrain_set_without_kept_edits_still_trains_on_the_backgrounds():
  table = toy_table()
  img, obj = _scene()
  from test_retrain import _gen
  edits = concat(table, _gen((0, 0)), second_split=GENERATED)
  bg = background_table(table, {0: img, 1: img[::-1]}, {0: obj, 1: obj[::-1]})
  both = concat(edits, bg, second_split=GENERATED)
  ts = retrain_set(both, len(table), (2.0, 2.0), 0.5, background_start=len(edits), background_weight=1.5)
  is_bg = ts.indices >= len(edits)
  n_train = len(table.indices("train"))
  assert (~is_bg).sum() == n_train and is_bg.sum() == 4 * round(n_train / 4)
  assert np.all(ts.weights[is_bg] == np.float32(1.5))


@pytest.mark.parametrize("cache", [False, True])
def test_generated_rows_are_not_centre_cropped_a_second_time(cache):
  from spurjax.data.pipeline import ImageSource, Preprocess
  table = toy_table(size=16)
  pp = Preprocess(image_size=16, resize=16, center_crop=12)
  src = ImageSource(table, pp, cache=cache)
  base = src(0)                                                   # crop 12 of 16, resize back to 16
  gen = Table(name="gen", refs=[0], y=np.zeros(1, np.int32), place=np.zeros(1, np.int32),
              split=np.full(1, GENERATED, np.int32), num_classes=2, num_places=2, read_image=lambda r: base)
  both = concat(table, gen, second_split=GENERATED)
  out = ImageSource(both, pp, cache=cache)
  np.testing.assert_array_equal(out(len(table)), base)           # already a base image: kept as it is
  np.testing.assert_array_equal(out(0), base)                     # dataset rows: cropped and resized as before
