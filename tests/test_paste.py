"""The paste generator's pure functions: erase, cut / fit, paste, determinism, bad input."""
import numpy as np
import pytest

from spurjax.data import synth
from spurjax.ddb.inpaint import paste
from spurjax.errors import SpurjaxError


def _disc(h, w, cy, cx, r):
  yy, xx = np.mgrid[0:h, 0:w]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_erase_constant_background_is_exact_and_outside_untouched():
  img = np.full((24, 24, 3), (40, 120, 200), np.uint8)
  m = _disc(24, 24, 12, 12, 5)
  img[m] = (255, 0, 0)
  out = paste.erase(img, m)
  np.testing.assert_array_equal(out[~m], img[~m])
  np.testing.assert_array_equal(out[m], np.broadcast_to([40, 120, 200], out[m].shape))


def test_erase_interpolates_a_gradient_within_border_range():
  # a left-right ramp: the harmonic fill of a ramp is the ramp itself
  ramp = np.linspace(0, 240, 32)
  img = np.stack([np.tile(ramp, (32, 1))] * 3, -1).astype(np.uint8)
  m = np.zeros((32, 32), bool)
  m[8:24, 10:22] = True
  dirty = img.copy()
  dirty[m] = 0
  out = paste.erase(dirty, m, iters=5000, tol=1e-4)
  np.testing.assert_array_equal(out[~m], dirty[~m])
  ring = paste.dilate(m, 1) & ~m
  assert out[m].min() >= img[ring].min() and out[m].max() <= img[ring].max()
  assert np.abs(out[m].astype(int) - img[m].astype(int)).max() <= 3


def test_dilate_and_bbox():
  m = np.zeros((10, 10), bool)
  m[4, 5] = True
  assert paste.dilate(m, 1).sum() == 9 and paste.dilate(m, 2).sum() == 25
  assert paste.bbox(paste.dilate(m, 1)) == (3, 4, 6, 7)


def test_fit_into_keeps_aspect_and_centres():
  patch = np.zeros((10, 20, 3), np.uint8)
  patch[..., 1] = 200
  pm = np.ones((10, 20), bool)
  img, m = paste.fit_into(patch, pm, (0, 0, 20, 20), (30, 30))
  t, l, b, r = paste.bbox(m)
  assert (b - t, r - l) == (10, 20) and (t, l) == (5, 0)
  assert (img[m] == (0, 200, 0)).all() and not m[20:].any() and not m[:, 20:].any()
  with pytest.raises(SpurjaxError):
    paste.fit_into(patch, pm, (5, 5, 5, 9), (30, 30))
  # fit="area": about the requested pixel count, aspect kept, clipped to the image
  img, m = paste.fit_into(patch, pm, (10, 10, 12, 12), (30, 30), fit="area", area=50)
  t, l, b, r = paste.bbox(m)
  assert (b - t, r - l) == (5, 10) and m.sum() == 50
  img, m = paste.fit_into(patch, pm, (0, 0, 2, 2), (30, 30), fit="area", area=5000)
  assert paste.bbox(m) == (0, 0, 15, 30)
  with pytest.raises(SpurjaxError, match="fit must be"):
    paste.fit_into(patch, pm, (0, 0, 20, 20), (30, 30), fit="stretch")


def _bench_pair(seed, y):
  return synth.render(y, 1 - y, np.random.default_rng(seed), 32)


def test_paste_edit_on_the_benchmark():
  src, src_m = _bench_pair(0, 0)  # a bird on water
  donors = [_bench_pair(s, 1) for s in (1, 2, 3)]  # flowers
  e = paste.paste_edit(src, src_m, donors, seed=7)
  assert e.image.shape == src.shape and e.image.dtype == np.uint8
  # only the edited region changed; the pasted pixels are the donor's object colours
  np.testing.assert_array_equal(e.image[~e.mask], src[~e.mask])
  assert e.mask.sum() == (e.erased | e.pasted).sum() and e.erased.sum() >= src_m.sum()
  t, l, b, r = paste.bbox(e.erased)
  pt, pl, pb, pr = paste.bbox(e.pasted)
  assert t <= pt and l <= pl and pb <= b and pr <= r  # fitted into the erased box
  assert (pb - pt == b - t) or (pr - pl == r - l)  # as large as the box allows
  d_img, d_m = donors[e.donor]
  # resizing blends pixels but keeps the mean colour: the pasted object looks like the donor's
  donor_mean, src_mean = d_img[d_m].mean(0), src[src_m].mean(0)
  pasted_mean = e.image[e.pasted].mean(0)
  assert np.abs(pasted_mean - donor_mean).max() < 25
  assert np.abs(pasted_mean - donor_mean).sum() < np.abs(pasted_mean - src_mean).sum()
  # the erased-but-not-pasted part no longer shows the source object: it is close to background
  left = e.erased & ~e.pasted
  if left.any():
    assert np.abs(e.image[left].astype(int) - src[left].astype(int)).mean() > 1


def test_paste_edit_same_size_object_is_copied_exactly():
  bg = np.full((20, 20, 3), 90, np.uint8)
  src, src_m = bg.copy(), _disc(20, 20, 10, 10, 4)
  src[src_m] = (250, 250, 0)
  donor, d_m = bg.copy(), _disc(20, 20, 6, 13, 4)
  donor[d_m] = (0, 30, 250)
  e = paste.paste_edit(src, src_m, [(donor, d_m)], seed=0, dilate_px=0)
  np.testing.assert_array_equal(e.pasted, src_m)
  assert (e.image[src_m] == (0, 30, 250)).all()
  np.testing.assert_array_equal(e.image[~src_m], src[~src_m])


def test_paste_edit_area_fit_matches_the_erased_object_size():
  src, src_m = _bench_pair(0, 0)
  donors = [_bench_pair(s, 1) for s in (1, 2, 3)]
  e = paste.paste_edit(src, src_m, donors, seed=7, fit="area")
  assert 0.6 < e.pasted.sum() / src_m.sum() < 1.5
  np.testing.assert_array_equal(e.image[~e.mask], src[~e.mask])


def test_paste_edit_is_deterministic_and_seed_dependent():
  src, src_m = _bench_pair(0, 0)
  donors = [_bench_pair(s, 1) for s in range(1, 7)]
  a = paste.paste_edit(src, src_m, donors, seed=3)
  b = paste.paste_edit(src, src_m, donors, seed=3)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.mask, b.mask)
  others = [paste.paste_edit(src, src_m, donors, seed=s) for s in range(4, 12)]
  assert any(not np.array_equal(o.image, a.image) for o in others)
  assert len({o.donor for o in others}) > 1


def test_bad_input():
  img = np.zeros((8, 8, 3), np.uint8)
  m = np.zeros((8, 8), bool)
  m[2:4, 2:4] = True
  with pytest.raises(SpurjaxError, match="empty"):
    paste.paste_edit(img, np.zeros((8, 8), bool), [(img, m)], 0)
  with pytest.raises(SpurjaxError, match="differs"):
    paste.paste_edit(img, np.ones((7, 8), bool), [(img, m)], 0)
  with pytest.raises(SpurjaxError, match="no donor"):
    paste.paste_edit(img, m, [], 0)
  with pytest.raises(SpurjaxError, match="whole image"):
    paste.erase(img, np.ones((8, 8), bool))
