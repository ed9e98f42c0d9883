"""The strict judge's negatives: object-sized blobs in the object's place, and noisy objects."""
import numpy as np

from spurjax.bench import blobs
from spurjax.ddb.inpaint.paste import dilate


def _scene(seed=0):
  rs = np.random.RandomState(seed)
  img = (rs.rand(32, 32, 3) * 60 + 40).astype(np.uint8)   # dull background
  mask = np.zeros((32, 32), bool)
  mask[10:16, 8:20] = True                                 # a wide object
  mask[8:10, 17:20] = True                                 # and a "head"
  img[mask] = (250, 40, 40)
  return img, mask


def test_blob_changes_only_the_object_and_the_blob():
  img, mask = _scene()
  out = blobs.blob_image(img, mask, seed=3)
  assert out.shape == img.shape and out.dtype == np.uint8
  region = blobs.blob_region(mask, blobs._rng(3))
  touched = dilate(mask, 1) | dilate(region, 1)
  np.testing.assert_array_equal(out[~touched], img[~touched])
  # the object's exact shape is gone: not every object pixel keeps its colour
  assert np.any(np.abs(out[mask].astype(int) - img[mask].astype(int)).sum(-1) > 30)


def test_blob_is_deterministic_per_seed_and_differs_across_seeds():
  img, mask = _scene()
  a, b, c = blobs.blob_image(img, mask, 5), blobs.blob_image(img, mask, 5), blobs.blob_image(img, mask, 6)
  np.testing.assert_array_equal(a, b)
  assert np.any(a != c)


def test_blob_region_spans_about_the_objects_box():
  _, mask = _scene()
  for s in range(20):
    r = blobs.blob_region(mask, np.random.default_rng(s))
    ys, xs = np.nonzero(r)
    assert r.any() and r.sum() < 4 * 8 * 12                # at most a few times the 8 x 12 box
    assert 4 <= ys.mean() <= 18 and 8 <= xs.mean() <= 20   # centred near the object


def test_noisy_object_touches_only_the_object():
  img, mask = _scene()
  seeds = [s for s in range(10) if np.any(blobs.noisy_object(img, mask, s) != img)]
  assert seeds, "some seed must add visible noise"
  out = blobs.noisy_object(img, mask, seeds[0])
  np.testing.assert_array_equal(out[~mask], img[~mask])
