"""DiffEdit contrast masks: the difference map finds where the prompts disagree; cleaning and boxes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax.ddb.segment import diffedit
from spurjax.diffusion import schedulers
from spurjax.errors import SpurjaxError

SCHED = schedulers.make_schedule({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"})
H = 16


def region_denoise(params, x, t, ctx):
  """A fake model whose prediction depends on the prompt only inside params['region'] (B, H, W)."""
  cond = ctx.mean(axis=(1, 2))[:, None, None, None]            # one number per row from the prompt
  region = jnp.concatenate([params["region"], params["region"]], axis=0)[..., None]
  return 0.1 * x[..., :3] + region * cond


def _data(b=3):
  region = np.zeros((b, H, H), np.float32)
  region[0, 4:9, 3:12] = 1
  region[1, 2:14, 6:10] = 1
  region[2, 10:15, 1:6] = 1
  images = np.random.default_rng(0).uniform(size=(b, H, H, 3)).astype(np.float32)
  src = np.zeros((b, 4, 8), np.float32)
  tgt = np.ones((b, 4, 8), np.float32)
  return {"region": jnp.asarray(region)}, images, src, tgt, region.astype(bool)


def test_mask_is_where_prompts_disagree():
  params, images, src, tgt, region = _data()
  st = diffedit.Settings(n_draws=3, smooth=0, close=0)
  maps, masks = diffedit.contrast_masks(region_denoise, SCHED, params, images, src, tgt, jax.random.key(0), settings=st)
  assert maps.shape == masks.shape == region.shape and masks.dtype == jnp.bool_
  np.testing.assert_allclose(np.asarray(maps).mean(axis=(1, 2)), 1.0, rtol=1e-4)   # normalised by the mean
  np.testing.assert_array_equal(np.asarray(masks), region)
  assert np.all(diffedit.iou(masks, region) == 1.0)
  # Same prompt on both sides: no difference anywhere, so nothing exceeds 1.5 x the mean.
  _, none = diffedit.contrast_masks(region_denoise, SCHED, params, images, src, src, jax.random.key(0), settings=st)
  assert not np.asarray(none).any()


def test_draws_average_noise_and_results_are_deterministic():
  params, images, src, tgt, region = _data()

  def noisy(params, x, t, ctx):  # prompt-dependent noise everywhere plus a strong response in the region
    return region_denoise(params, x, t, ctx) + 0.6 * jnp.sin(37.0 * x[..., :3] * ctx.mean())
  st1 = diffedit.Settings(n_draws=1, smooth=0, close=0)
  st8 = dataclasses.replace(st1, n_draws=8)
  a1 = diffedit.contrast_masks(noisy, SCHED, params, images, src, tgt, jax.random.key(1), settings=st1)[1]
  a8 = diffedit.contrast_masks(noisy, SCHED, params, images, src, tgt, jax.random.key(1), settings=st8)[1]
  b8 = diffedit.contrast_masks(noisy, SCHED, params, images, src, tgt, jax.random.key(1), settings=st8)[1]
  np.testing.assert_array_equal(np.asarray(a8), np.asarray(b8))
  assert diffedit.iou(a8, region).mean() >= diffedit.iou(a1, region).mean()


def test_closing_and_boxes():
  params, images, src, tgt, region = _data()
  holes = np.asarray(params["region"]).copy()
  holes[0, 6, 7] = 0                                  # a one-pixel hole inside object 0
  p = {"region": jnp.asarray(holes)}
  base = diffedit.Settings(n_draws=2, smooth=0, close=0)
  _, raw = diffedit.contrast_masks(region_denoise, SCHED, p, images, src, tgt, jax.random.key(0), settings=base)
  assert not np.asarray(raw)[0, 6, 7]
  _, closed = diffedit.contrast_masks(region_denoise, SCHED, p, images, src, tgt, jax.random.key(0),
                                      settings=dataclasses.replace(base, close=1))
  assert np.asarray(closed)[0, 6, 7]
  _, box = diffedit.contrast_masks(region_denoise, SCHED, p, images, src, tgt, jax.random.key(0),
                                   settings=dataclasses.replace(base, box="box", box_grow=1))
  expect = np.zeros_like(region)
  expect[0, 3:10, 2:13] = expect[1, 1:15, 5:11] = expect[2, 9:16, 0:7] = True
  np.testing.assert_array_equal(np.asarray(box), expect)
  _, sq = diffedit.contrast_masks(region_denoise, SCHED, p, images, src, tgt, jax.random.key(0),
                                  settings=dataclasses.replace(base, box="square", box_grow=1))
  sq = np.asarray(sq)
  for b in range(3):
    ys, xs = np.nonzero(sq[b])
    assert ys.max() - ys.min() == xs.max() - xs.min() and sq[b].sum() == (ys.max() - ys.min() + 1) ** 2
    assert (sq[b] >= expect[b]).all()                 # the square holds the box


def test_inpainting_unet_sees_the_whole_image_masked():
  params, images, src, tgt, region = _data()
  seen = {}

  def spy(params, x, t, ctx):
    jax.debug.callback(lambda a, b: seen.update(x=np.asarray(a), t=np.asarray(b)), x, t)
    return region_denoise(params, x[..., :3], t, ctx)
  st = diffedit.Settings(n_draws=1, inpaint=True, strength=0.4)
  jax.block_until_ready(diffedit.contrast_masks(spy, SCHED, params, images, src, tgt, jax.random.key(0), settings=st))
  x = seen["x"]
  assert x.shape == (6, H, H, 7) and np.all(x[..., 3] == 1) and np.all(x[..., 4:] == 0)
  assert np.all(np.asarray(seen["t"]) == 400)


@pytest.mark.slow
def test_pipeline_adapter_on_a_tiny_random_pipeline(tmp_path):
  pytest.importorskip("transformers")
  from test_select_segment import tiny_pipeline
  pipe = tiny_pipeline(tmp_path, in_channels=7)
  assert pipe.is_inpaint
  images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  maps, masks = diffedit.pipeline_contrast_masks(pipe, images, ["a photo of a bird"] * 2, ["a photo of a flower"] * 2,
                                                 n_draws=2)
  assert maps.shape == masks.shape == (2, 8, 8) and np.all(np.isfinite(maps)) and masks.dtype == bool
  np.testing.assert_allclose(maps.mean(axis=(1, 2)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("change,match", [
    (dict(strength=1.0), "strength"), (dict(n_draws=0), "n_draws"), (dict(threshold=0.0), "threshold"),
    (dict(box="circle"), "box="), (dict(refine=True, refine_low=4.0, refine_high=1.0), "refine_low"),
    (dict(refine=True, refine_k=0), "refine_k"),
])
def test_bad_settings(change, match):
  params, images, src, tgt, _ = _data()
  with pytest.raises(SpurjaxError, match=match):
    diffedit.contrast_masks(region_denoise, SCHED, params, images, src, tgt, jax.random.key(0),
                            settings=diffedit.Settings(**change))
  with pytest.raises(SpurjaxError, match="contexts"):
    diffedit.contrast_masks(region_denoise, SCHED, params, images, src[:2], tgt, jax.random.key(0))


def test_smoothing_is_a_border_aware_box_mean():
  x = np.random.default_rng(0).uniform(size=(2, 5, 6)).astype(np.float32)
  got = np.asarray(diffedit._pool(jnp.asarray(x), 1, "mean"))
  p = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
  want = np.nanmean(np.stack([p[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)]), axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _blurry_object(b=2, h=24):
  """Coloured objects on noisy grey backgrounds, and contrast maps that are a blurred, too-big copy of them."""
  rng = np.random.default_rng(3)
  obj = np.zeros((b, h, h), bool)
  obj[0, 6:12, 5:15] = True
  obj[1, 12:20, 14:18] = True
  obj[1, 10:12, 12:20] = True            # not a box: a cross
  images = 0.5 + 0.05 * rng.standard_normal((b, h, h, 3))
  images[obj] = (0.9, 0.2, 0.1)
  blur = np.asarray(diffedit._pool(jnp.asarray(obj, jnp.float32), 1, "mean"))
  maps = blur / blur.mean(axis=(1, 2), keepdims=True)
  return obj, np.clip(images, 0, 1).astype(np.float32), maps.astype(np.float32)


def test_colour_refinement_recovers_the_object_from_a_blurry_map():
  obj, images, maps = _blurry_object()
  st = diffedit.Settings(refine=True, refine_low=1.0, refine_high=4.0)
  plain = np.asarray(maps) > st.threshold
  refined = np.asarray(diffedit.refine_masks(jnp.asarray(maps), jnp.asarray(images), st))
  assert refined.dtype == bool and refined.shape == obj.shape
  assert diffedit.iou(plain, obj).max() < 0.8           # the threshold alone spills over the object's border
  assert diffedit.iou(refined, obj).min() > 0.9         # colour decides the uncertain band
  # A map with nothing above refine_high keeps the plain threshold (no seeds to vote with).
  low = maps / maps.max(axis=(1, 2), keepdims=True) * 3.0
  kept = np.asarray(diffedit.refine_masks(jnp.asarray(low), jnp.asarray(images), st))
  np.testing.assert_array_equal(kept, low > st.threshold)


def test_colour_refinement_on_large_images_runs_on_a_smaller_grid():
  obj, images, maps = _blurry_object()
  up = lambda x: np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)   # 96 px, refined at 48 px
  st = diffedit.Settings(refine=True, refine_size=48)
  big = np.asarray(diffedit.refine_masks(jnp.asarray(up(maps)), jnp.asarray(up(images)), st))
  assert big.shape == (2, 96, 96)
  assert diffedit.iou(big, up(obj)).min() > 0.9


def test_contrast_masks_use_the_refinement_when_asked():
  params, images, src, tgt, region = _data()
  st = diffedit.Settings(n_draws=2, smooth=0, close=0, refine=True)
  maps, masks = diffedit.contrast_masks(region_denoise, SCHED, params, images, src, tgt, jax.random.key(0), settings=st)
  want = diffedit.refine_masks(maps, jnp.asarray(images), st)
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(want))


def test_refinement_band_parsing():
  assert diffedit.parse_band("1,4", "x") == (1.0, 4.0) and diffedit.parse_band((0, 2.5), "x") == (0.0, 2.5)
  for bad, match in (("4,1", "0 <= low < high"), ("1", r"\(low, high\)"), ("a,b", "numbers"), ((1, 2, 3), "low, high")):
    with pytest.raises(SpurjaxError, match=f"^--band: .*{match}"):
      diffedit.parse_band(bad, "--band")
