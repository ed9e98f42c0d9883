"""DDB stages select and segment: majority selection, Otsu, IoU, attention / Grad-CAM / given masks."""
import dataclasses
import json
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import erm_artefact, run_stage, toy_config, toy_table
from spurjax import sharding
from spurjax.data.boxes import box_masks
from spurjax.data.table import Table
from spurjax.ddb import inpaint, segment, select
from spurjax.ddb.images import diffusion_size
from spurjax.context import Context
from spurjax.diffusion import clip_text, loading, pipeline_sampling, tokenizer as tok_lib, unet as unet_lib
from spurjax.diffusion import vae as vae_lib
from spurjax.errors import SpurjaxError
from spurjax.models import get_model

CLIP = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
# Cross-attention at two resolutions (8 x 8 in the outer blocks, 4 x 4 in the middle).
UNET = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
            attention_head_dim=(2, 2), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), in_channels=3, out_channels=3, sample_size=8)
SCHED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
             set_alpha_to_one=False, clip_sample=False)


def tiny_pipeline(directory, in_channels=3) -> loading.Pipeline:
  """A pixel-space text-to-image pipeline with random weights, 8 x 8 images."""
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(directory / "tok", vocab_size=CLIP["vocab_size"]))
  config = {**UNET, "in_channels": in_channels}
  return loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(config),
      unet_params=unet_lib.init_unet_params(config, jax.random.key(0), sample_size=8),
      text_encoder=clip_text.CLIPTextModel(CLIP), text_params=clip_text.init_clip_params(CLIP, jax.random.key(1)),
      tokenizer=tok, scheduler_config=SCHED)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  pytest.importorskip("transformers")
  return tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def classifier():
  model = get_model("cnn16", 2)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 16, 16, 3)), train=False))(jax.random.key(3))
  return model, jax.tree.map(np.asarray, dict(variables))


def _masked_table(with_masks=True):
  """toy_table() plus the true square mask of every class-1 image (class 0 rows: an empty mask)."""
  base = toy_table()
  square = np.zeros((16, 16), bool)
  square[4:12, 4:12] = True
  refs = list(range(len(base))) if with_masks else None
  return Table(name="toy", refs=base.refs, y=base.y, place=base.place, split=base.split, num_classes=2,
               num_places=2, read_image=base.read_image, mask_refs=refs,
               read_mask=(lambda i: square if base.y[i] == 1 else np.zeros_like(square)) if with_masks else None,
               class_names=("plain", "square"))


# ---------------------------------------------------------------- select


def test_select_majority_lowest_loss_ties_by_index():
  loss = np.array([0.5, 0.1, 0.3, 0.1, 0.9, 0.2, 0.05, 0.2])
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  got = select.select_majority(loss, labels, 2)
  np.testing.assert_array_equal(got[0], [1, 3])  # two ties at 0.1: lower index first
  np.testing.assert_array_equal(got[1], [6, 5])  # 0.05, then the tie 0.2 at 5 before 7
  assert len(select.select_majority(loss, labels, 10)[1]) == 4  # fewer than k: all of them
  with pytest.raises(SpurjaxError, match="class 2"):
    select.select_majority(loss, labels, 2, num_classes=3)
  with pytest.raises(SpurjaxError, match="ddb.select.k"):
    select.select_majority(loss, labels, 0)
  with pytest.raises(SpurjaxError, match="not finite"):
    select.select_majority(np.where(labels == 1, np.nan, loss), labels, 1)


def test_selection_uses_per_sample_loss_and_psi():
  logits = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 5.0], [0.0, -1.0]])
  labels = np.array([0, 0, 1, 1, 1])
  table_rows = np.array([10, 11, 12, 13, 14])
  got = select.selection_from_logits(logits, labels, table_rows, 1, 2)
  assert {c: list(v) for c, v in got.selected.items()} == {0: [10], 1: [13]}
  np.testing.assert_allclose(got.psi_ref[0], 1 / (1 + np.exp(-3.0)), rtol=1e-9)
  np.testing.assert_allclose(got.psi_ref[1], 1 / (1 + np.exp(-5.0)), rtol=1e-9)
  np.testing.assert_allclose(select.per_sample_ce(logits, labels)[4], np.log(1 + np.exp(1.0)), rtol=1e-9)


def test_select_stage_writes_and_reloads(tmp_path, classifier, mesh):
  model, variables = classifier
  cfg = toy_config()
  cfg.model.name = "cnn16"
  cfg.ddb.select.k = 3
  table = toy_table()
  ctx = Context(cfg=cfg, workdir=str(tmp_path), table=table, mesh=mesh)
  got, runner = run_stage(ctx, select.STAGE, erm=erm_artefact(model, variables))
  assert runner.redone == [("select", "new")]
  assert sorted(got.selected) == [0, 1]
  # The K lowest per-sample losses of each class, checked against the classifier by hand.
  x = (np.stack([table.image(i) for i in range(len(table))]) / 255.0 - np.array(cfg.data.mean)) / np.array(cfg.data.std)
  x = jnp.asarray(x, jnp.float32)
  logits = np.asarray(model.apply(variables, x, train=False))
  loss = select.per_sample_ce(logits, table.y)
  for c, idx in got.selected.items():
    train_c = np.nonzero((table.y == c) & (table.split == 0))[0]
    np.testing.assert_array_equal(np.sort(idx), np.sort(train_c[np.argsort(loss[train_c], kind="stable")[:3]]))
    assert 0 < got.psi_ref[c] < 1
  saved = json.load(open(tmp_path / "select" / "selected.json"))
  assert saved["selected"]["1"] == [int(i) for i in got.selected[1]] and saved["k"] == 3
  again = select.load(ctx, str(tmp_path / "select"))
  np.testing.assert_array_equal(again.selected[0], got.selected[0])


# ---------------------------------------------------------------- thresholds and IoU


def test_otsu_separates_bimodal_values():
  rng = np.random.default_rng(0)
  values = np.concatenate([rng.normal(0.2, 0.04, 3000), rng.normal(0.75, 0.05, 1000)]).clip(0, 1)
  thr = float(segment.otsu_threshold(jnp.asarray(values)))
  assert 0.3 < thr < 0.62, thr
  maps = np.zeros((2, 10, 10), np.float32)
  maps[0, 2:5, 2:5] = 3.0
  maps[1] = rng.uniform(0, 0.2, (10, 10))
  maps[1, 5:, 5:] += 1.0
  got = np.asarray(segment.otsu_masks(jnp.asarray(maps)))
  assert got.dtype == bool
  np.testing.assert_array_equal(got[0], maps[0] > 1)
  np.testing.assert_array_equal(got[1], maps[1] > 0.5)


def test_mask_iou_and_mean():
  a = np.zeros((8, 8), bool)
  b = np.zeros((8, 8), bool)
  a[:4] = True  # 32 pixels
  b[2:6] = True  # 32 pixels, 16 shared
  assert segment.mask_iou(a, b) == pytest.approx(16 / 48)
  assert segment.mask_iou(a, a) == 1.0 and segment.mask_iou(~a & a, ~a & a) == 1.0
  assert segment.mask_iou(a, ~a) == 0.0
  assert segment.mean_iou([a, a], [b, a]) == pytest.approx((16 / 48 + 1) / 2)
  with pytest.raises(SpurjaxError, match="shapes"):
    segment.mask_iou(a, a[:4])


def test_clean_mask_keeps_large_components():
  m = np.zeros((20, 20), bool)
  m[3:13, 3:13] = True
  m[6, 6] = False  # a hole
  m[17, 17] = True  # a speck
  m[15:19, 1:5] = True  # a small blob (16 px vs 100 px)
  got = segment.clean_mask(m, radius=1, keep_ratio=0.25)
  assert got[4:12, 4:12].all() and got[3:13, 3:13].sum() == 96  # the opening rounds the 4 corners
  assert not got[17, 17] and not got[15:19, 1:5].any()
  assert segment.clean_mask(m, radius=0, keep_ratio=0.1)[15:19, 1:5].all()
  assert segment.clean_mask(m, radius=1, dilate=1)[2, 5]


# ---------------------------------------------------------------- language-guided masks


def test_noun_token_weights(pipe):
  w = segment.noun_token_weights(pipe.tokenizer, ["a photo of a bird", "a photo of a dog"], ["bird", "dog"])
  ids = tok_lib.encode(pipe.tokenizer, ["a photo of a bird"])[0]
  bird = pipe.tokenizer("bird", add_special_tokens=False)["input_ids"]
  pos = np.nonzero(w[0])[0]
  assert list(ids[pos]) == bird and w[0].sum() == pytest.approx(1.0) and w[1].sum() == pytest.approx(1.0)
  with pytest.raises(SpurjaxError, match="not found"):
    segment.noun_token_weights(pipe.tokenizer, ["a photo of a cat"], ["bird"])


@pytest.mark.slow
def test_attention_maps_shape_and_normalisation(pipe, mesh):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)  # not the model's 8 px: resized both ways
  nouns = ["bird", "dog", "bird", "dog", "bird"]
  maps = segment.attention_maps(pipe, images, nouns, timesteps=(100, 500), mesh=mesh, batch_size=4)
  chex.assert_shape(maps, (5, 16, 16))
  assert maps.dtype == np.float32 and np.all(np.isfinite(maps))
  np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-6)
  assert np.abs(maps[0] - maps[2]).max() > 1e-3  # different images, different maps
  # The same images again (same compiled program): deterministic.
  np.testing.assert_array_equal(segment.attention_maps(pipe, images, nouns, timesteps=(100, 500), mesh=mesh,
                                                       batch_size=4), maps)
  masks = np.asarray(segment.otsu_masks(jnp.asarray(maps)))
  assert masks.dtype == bool and masks.shape == (5, 16, 16) and masks.any(axis=(1, 2)).all()


VAE = dict(block_out_channels=[8, 8], down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, latent_channels=4)


@pytest.mark.parametrize("kind", ["pixel_inpainting", "latent"])
def test_attention_program_unet_inputs(tmp_path, kind):
  """What the UNet is fed, traced (not compiled): an inpainting UNet gets [x_t, empty mask, image]
  (3 + 1 + 3 channels); with a VAE the images are encoded to an 8 x 8 latent grid first."""
  pytest.importorskip("transformers")
  if kind == "latent":
    base = tiny_pipeline(tmp_path, in_channels=4)
    config = {**UNET, "in_channels": 4, "out_channels": 4}
    pipe = dataclasses.replace(base, unet=unet_lib.UNet2DConditionModel(config),
                               unet_params=unet_lib.init_unet_params(config, jax.random.key(0), sample_size=8),
                               vae=vae_lib.AutoencoderKL(VAE),
                               vae_params=vae_lib.init_vae_params(VAE, jax.random.key(2)))
    size, want = 16, (2, 8, 8, 4)
  else:
    pipe = tiny_pipeline(tmp_path, in_channels=7)
    size, want = 8, (2, 8, 8, 7)
  assert diffusion_size(pipe) == (size, size)
  prog = segment.attention._attention_program(pipe, (300,))
  seen = {}
  unet_call = prog.unet.apply

  def spy(variables, x, *args, **kw):
    seen["x"] = x
    return unet_call(variables, x, *args, **kw)

  prog = dataclasses.replace(prog, unet=types.SimpleNamespace(apply=spy))
  params = pipeline_sampling.pipeline_fns(pipe).params
  out = jax.eval_shape(lambda *a: prog.__call__(*a), params, jax.random.key(0), jnp.zeros((2, size, size, 3)),
                       jnp.zeros((2, 77, 16)), jnp.zeros((2, 77)), jnp.arange(2, dtype=jnp.int32))
  assert out.shape == (2, size, size) and seen["x"].shape == want


# ---------------------------------------------------------------- Grad-CAM


def test_gradcam_matches_manual_computation(classifier, mesh):
  model, variables = classifier
  assert segment.feature_module_path(model, variables, (16, 16, 3)) == ("bn_3",)
  images = toy_table().read_image(0)[None].repeat(4, 0)
  images[1:] = np.stack([toy_table().read_image(i) for i in (30, 40, 50)])
  classes = np.array([0, 1, 1, 0])
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  maps = segment.gradcam_maps(model, variables, images, classes, mean=mean, std=std, mesh=mesh, batch_size=4)
  chex.assert_shape(maps, (4, 16, 16))
  # By hand: logits = fc(mean_hw(relu(A))), so dlogit_c/dA = 1[A > 0] W[:, c] / (h w).
  x = (images / 255.0 - np.array(mean)) / np.array(std)
  _, state = model.apply(variables, jnp.asarray(x, jnp.float32), train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  a = np.asarray(state["intermediates"]["bn_3"]["__call__"][0])
  w = np.asarray(variables["params"]["fc"]["kernel"])[:, classes].T  # (B, C)
  h, wd = a.shape[1:3]
  alpha = ((a > 0) * w[:, None, None, :] / (h * wd)).mean(axis=(1, 2))
  cam = np.maximum(np.einsum("bhwc,bc->bhw", np.maximum(a, 0), alpha), 0)
  want = np.asarray(jax.image.resize(jnp.asarray(cam), (4, 16, 16), "linear"))
  want = np.asarray(segment.normalise_maps(jnp.asarray(want)))
  np.testing.assert_allclose(maps, want, atol=1e-4)


# ---------------------------------------------------------------- the stage


def _ctx(tmp_path, mesh, table, mask, pipeline=None):
  cfg = toy_config()
  cfg.model.name = "cnn16"
  cfg.ddb.segment.method = mask
  cfg.ddb.nouns = ("bird", "dog")
  cfg.ddb.segment.timesteps = (100, 500)
  cfg.ddb.segment.batch_size = 4
  cfg.diffusion.path = str(tmp_path / "no-model")
  return Context(cfg=cfg, workdir=str(tmp_path), table=table, mesh=mesh, pipeline=pipeline)


SELECTED = select.Selection(k=3, selected={0: np.array([0, 1]), 1: np.array([30, 31, 32])}, psi_ref={0: 0.9, 1: 0.9},
                            loss={})


def test_segment_stage_given_masks(tmp_path, mesh):
  table = _masked_table()
  ctx = _ctx(tmp_path, mesh, table, "given")
  ctx.cfg.ddb.segment.compare = ()
  got, _ = run_stage(ctx, segment.STAGE, erm=None, select=SELECTED)
  masks = got.masks
  assert sorted(masks) == [0, 1, 30, 31, 32]
  assert masks[30].dtype == bool and masks[30].shape == (16, 16) and masks[30][4:12, 4:12].all()
  assert masks[30].sum() == 64 and not masks[0].any()
  assert got.iou["num_images"] == 5 and got.iou["method"] == "given"
  assert sorted(os.listdir(tmp_path / "segment" / "masks")) == [f"{i}.png" for i in (0, 1, 30, 31, 32)]
  ctx2 = _ctx(tmp_path / "b", mesh, toy_table(), "given")
  ctx2.cfg.ddb.segment.compare = ()
  with pytest.raises(SpurjaxError, match="no mask column"):
    run_stage(ctx2, segment.STAGE, erm=None, select=SELECTED)
  assert not (tmp_path / "b" / "segment").exists()  # nothing half-written in place
  with pytest.raises(SpurjaxError, match="ddb.segment.method"):
    segment.method_name("sam")


def test_segment_stage_attention_scores_every_method(tmp_path, mesh, pipe, classifier):
  ctx = _ctx(tmp_path, mesh, _masked_table(), "attention", pipeline=pipe)
  ctx.cfg.ddb.segment.compare = ("attention", "gradcam")
  got, _ = run_stage(ctx, segment.STAGE, erm=erm_artefact(*classifier), select=SELECTED)
  masks = got.masks
  assert sorted(masks) == [0, 1, 30, 31, 32]
  for m in masks.values():
    assert m.dtype == bool and m.shape == (16, 16) and m.any()
  iou = json.load(open(tmp_path / "segment" / "iou.json"))
  assert set(iou["mean_iou"]) == {"attention", "gradcam"} and iou["method"] == "attention"
  # Each image's score is the IoU of its saved mask with its true mask, and the mean is their mean.
  truth = _masked_table().read_mask
  per = {i: segment.mask_iou(masks[i], truth(i)) for i in masks}
  assert iou["per_image"] == pytest.approx({str(i): v for i, v in per.items()})
  assert iou["mean_iou"]["attention"] == pytest.approx(np.mean(list(per.values())))


def test_segment_stage_keeps_raw_masks_beside_boxed(tmp_path, mesh, pipe, classifier, monkeypatch):
  ctx = _ctx(tmp_path, mesh, _masked_table(), "gradcam", pipeline=pipe)
  ctx.cfg.ddb.segment.compare = ()
  ctx.cfg.ddb.segment.box = "square"
  from spurjax.ddb.segment import stage as segment_stage
  calls = []
  monkeypatch.setattr(segment_stage, "box_masks", lambda *a, **k: calls.append(1) or box_masks(*a, **k))
  got, _ = run_stage(ctx, segment.STAGE, erm=erm_artefact(*classifier), select=SELECTED)
  assert len(got.masks) > 1 and len(calls) == 1   # boxed once for the stage, not once per scored image
  monkeypatch.undo()
  for i, m in got.masks.items():   # each used mask is the square around its raw mask
    np.testing.assert_array_equal(m, box_masks(got.raw[i][None], "square")[0])
  iou = json.load(open(tmp_path / "segment" / "iou.json"))
  truth = _masked_table().read_mask
  raw = np.mean([segment.mask_iou(got.raw[i], truth(i)) for i in got.raw])
  assert iou["mean_iou_raw"]["gradcam"] == pytest.approx(raw) and iou["mask_box"] == "square"
  again = segment.load(ctx, str(tmp_path / "segment"))
  assert all(np.array_equal(again.raw[i], got.raw[i]) for i in got.raw)


def test_box_masks_grow_and_square():
  m = np.zeros((1, 12, 12), bool)
  m[0, 4:6, 3:9] = True                                    # 2 x 6
  box = box_masks(m, "box", grow=1)[0]
  assert box[3:7, 2:10].all() and box.sum() == 4 * 8
  sq = box_masks(m, "square", grow=1)[0]
  ys, xs = np.nonzero(sq)
  assert ys.max() - ys.min() + 1 == 8 and xs.max() - xs.min() + 1 == 8 and sq.sum() == 64 and sq[3:7, 2:10].all()
  edge = np.zeros((1, 12, 12), bool)
  edge[0, 0:2, 0:10] = True                                # a square of side 10 is moved inside the image
  assert box_masks(edge, "square")[0].sum() == 100
  assert not box_masks(np.zeros((1, 4, 4), bool), "square").any()
  with pytest.raises(SpurjaxError, match="ddb.segment.box"):
    box_masks(m, "circle")


@pytest.mark.slow
def test_segment_stage_diffedit_with_colour_refinement(tmp_path, mesh, pipe):
  ctx = _ctx(tmp_path, mesh, _masked_table(), "diffedit", pipeline=pipe)
  ctx.cfg.ddb.segment.compare = ()
  ctx.cfg.ddb.segment.diffedit_draws = 2
  ctx.cfg.ddb.segment.diffedit_refine = True
  assert "ddb.segment" in segment.STAGE.config_keys(ctx.cfg)   # the refinement keys, with the whole group
  got, _ = run_stage(ctx, segment.STAGE, erm=None, select=SELECTED)
  assert sorted(got.masks) == [0, 1, 30, 31, 32]
  assert all(m.dtype == bool and m.shape == (16, 16) for m in got.masks.values())
  assert json.load(open(tmp_path / "segment" / "iou.json"))["method"] == "diffedit"
  for band, match in (((4.0, 1.0), "0 <= low < high"), ((1.0,), "low, high"), (("a", 2), "numbers")):
    bad = _ctx(tmp_path / "bad", mesh, _masked_table(), "diffedit", pipeline=pipe)
    bad.cfg.ddb.segment.compare = ()
    bad.cfg.ddb.segment.diffedit_refine = True
    bad.cfg.ddb.segment.diffedit_refine_band = band
    with pytest.raises(SpurjaxError, match=f"ddb.segment.diffedit_refine_band.*{match}"):
      run_stage(bad, segment.STAGE, erm=None, select=SELECTED)
    assert not (tmp_path / "bad" / "segment").exists()


def test_report_names_the_masks_iou_and_that_of_their_boxes():
  from spurjax.ddb.report import masks_line
  m = {"method": "diffedit", "num_images": 6, "mask_box": "square", "mask_box_grow": 4,
       "mean_iou": {"diffedit": 0.15, "attention": 0.13}, "mean_iou_raw": {"diffedit": 0.74, "attention": 0.42}}
  line = masks_line(m)
  assert "of the masks: diffedit 0.740, attention 0.420; of their squares (grown 4 px" in line
  assert line.index("0.740") < line.index("0.150")
  assert "of their boxes (grown 4 px, what is inpainted)" in masks_line({**m, "mask_box": "box"})
  assert "of their squares (grown 4 px): " in masks_line({**m, "method": "given"})
  plain = masks_line({**m, "mask_box": "none", "mean_iou": {"given": 1.0}, "mean_iou_raw": {"given": 1.0}})
  assert "of the masks" not in plain and "mean IoU given 1.000" in plain
