"""DDB stage inpaint: counterfactual counts and labels, kept background, modes, tokens, the resumable stage."""
import csv
import os
import shutil
import types

import jax
import numpy as np
import pytest

from helpers import run_stage, toy_config, toy_table
from spurjax import sharding
from spurjax.data.images import read_image, read_mask
from spurjax.ddb import inpaint, invert, segment, select
from spurjax.ddb.images import diffusion_size
from spurjax.context import Context
from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, unet as unet_lib
from spurjax.errors import SpurjaxError

pytest.importorskip("transformers")

CLIP = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
UNET = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
            attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), out_channels=3, sample_size=8)
SCHED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
             set_alpha_to_one=False, clip_sample=False)
TOKENS = {0: "<c0>", 1: "<c1>", 2: "<c2>"}
NOUNS = ("bird", "bird", "dog")
FAST = dict(num_steps=2, guidance_scale=2.0, batch_size=4)


def tiny_pipeline(directory, in_channels: int) -> loading.Pipeline:
  """A pixel-space pipeline (8 x 8 images) whose tokenizer holds three learned tokens."""
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(directory / "tok", vocab_size=CLIP["vocab_size"]))
  tok_lib.add_placeholder_tokens(tok, list(TOKENS.values()))
  text = clip_text.resize_token_embeddings(clip_text.init_clip_params(CLIP, jax.random.key(1)), len(tok))
  config = {**UNET, "in_channels": in_channels}
  return loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(config),
      unet_params=unet_lib.init_unet_params(config, jax.random.key(0), sample_size=8),
      text_encoder=clip_text.CLIPTextModel(CLIP), text_params=text, tokenizer=tok, scheduler_config=SCHED)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


@pytest.fixture(scope="module")
def pipe3(tmp_path_factory):
  return tiny_pipeline(tmp_path_factory.mktemp("p3"), 3)


@pytest.fixture(scope="module")
def pipe7(tmp_path_factory):
  return tiny_pipeline(tmp_path_factory.mktemp("p7"), 7)  # inpainting UNet: x_t + mask + masked image


def _inputs(size=8, n=2, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
  masks = np.zeros((n, size, size), bool)
  q = size // 4
  masks[:, q:3 * q, q:3 * q] = True
  masks[-1] = False
  masks[-1, :2 * q, :2 * q] = True
  return images, masks


@pytest.mark.slow
def test_blended_k3_counts_labels_and_kept_background(pipe3, mesh):
  images, masks = _inputs()
  out = inpaint.make_counterfactuals(pipe3, images, masks, [0, 2], TOKENS, NOUNS, n_samples=2, mode="blended",
                                     seed=0, mesh=mesh, num_classes=3, paste=False, **FAST)
  imgs = out["images"]
  assert imgs.shape == (2 * 2 * 2, 8, 8, 3) and imgs.dtype == np.float32  # images x (K - 1) x samples
  np.testing.assert_array_equal(out["source"], [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(out["source_class"], [0, 0, 0, 0, 2, 2, 2, 2])
  np.testing.assert_array_equal(out["target_class"], [1, 1, 2, 2, 0, 0, 1, 1])
  np.testing.assert_array_equal(out["sample"], [0, 1] * 4)
  src = images[out["source"]]
  keep = ~masks[out["source"]][..., None]
  # Native size, no paste: the sampler alone keeps the unmasked pixels.
  np.testing.assert_allclose(np.where(keep, imgs, 0), np.where(keep, src, 0), atol=1e-5)
  assert np.abs(np.where(keep, 0, imgs - src)).max() > 1e-2  # the masked region was repainted
  assert np.abs(imgs[0] - imgs[1]).max() > 1e-3  # two samples of one edit differ
  again = inpaint.make_counterfactuals(pipe3, images, masks, [0, 2], TOKENS, NOUNS, n_samples=2, mode="auto",
                                       seed=0, mesh=mesh, num_classes=3, paste=False, **FAST)
  np.testing.assert_array_equal(again["images"], imgs)  # deterministic; "auto" picks blended for 3 channels
  # With attributes each edit's prompt names one of them: same noise, other prompts, other pixels.
  coloured = inpaint.make_counterfactuals(pipe3, images, masks, [0, 2], TOKENS, NOUNS, n_samples=2, mode="blended",
                                          seed=0, mesh=mesh, num_classes=3, paste=False, attributes=("red", "blue"),
                                          template="a photo of {a_attribute} {token} {noun}", **FAST)
  assert coloured["images"].shape == imgs.shape and np.abs(coloured["images"] - imgs).max() > 1e-4


def test_paste_keeps_background_at_another_size(pipe3, mesh):
  images, masks = _inputs(size=16, n=3, seed=1)
  out = inpaint.make_counterfactuals(pipe3, (images * 255).round().astype(np.uint8), masks, [0, 1, 1], TOKENS,
                                     NOUNS[:2], n_samples=1, seed=3, mesh=mesh, **FAST)
  assert out["images"].shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(out["target_class"], [1, 0, 0])
  src = (images * 255).round() / 255
  keep = ~masks[..., None]
  np.testing.assert_allclose(np.where(keep, out["images"], 0), np.where(keep, src, 0), atol=1e-6)
  assert np.abs(np.where(keep, 0, out["images"] - src)).max() > 1e-2


def test_the_model_sees_the_sources_at_its_resolution_and_the_edits_come_back_at_theirs(pipe3, mesh, monkeypatch):
  """Inpainting starts from the source read at the model's resolution (8 px here), not from the
  classifier's smaller base image (4 px) upsampled; the edits come back at the base size, pasted
  into the base images outside the mask."""
  from spurjax.diffusion import sampling
  sharp, masks = _inputs(size=8, n=2, seed=2)
  small = sharp.reshape(2, 4, 2, 4, 2, 3).mean((2, 4))          # the base images: 4 x 4
  small_masks = masks[:, ::2, ::2]
  seen = []
  real = sampling.inpaint_blended
  monkeypatch.setattr(sampling, "inpaint_blended", lambda *a, **k: seen.append(np.asarray(k["images"])) or real(*a, **k))
  edits = list(inpaint.iter_counterfactuals(pipe3, small, small_masks, [0, 1], TOKENS, NOUNS[:2], seed=0, mesh=mesh,
                                            model_images=sharp, desc=None, **FAST))
  np.testing.assert_allclose(seen[0][:2], sharp[[0, 1]], atol=1e-6)   # the sharp sources, not `small` upsampled
  out = np.concatenate([imgs for _, _, imgs in edits])
  assert out.shape == (2, 4, 4, 3)
  keep = ~small_masks[..., None]
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, small[[0, 1]], 0), atol=1e-6)
  seen.clear()
  list(inpaint.iter_counterfactuals(pipe3, small, small_masks, [0, 1], TOKENS, NOUNS[:2], seed=0, mesh=mesh,
                                    desc=None, **FAST))
  assert np.abs(seen[0][:2] - sharp[[0, 1]]).max() > 1e-2          # without them: the base images upsampled


@pytest.mark.slow
def test_channels_mode_and_mode_checks(pipe3, pipe7, mesh):
  images, masks = _inputs()
  out = inpaint.make_counterfactuals(pipe7, images, masks, [1, 0], TOKENS, NOUNS[:2], n_samples=2,
                                     mode="channels", mesh=mesh, paste=False, **FAST)
  assert out["images"].shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(out["target_class"], [0, 0, 1, 1])
  keep = ~masks[out["source"]][..., None]
  np.testing.assert_allclose(np.where(keep, out["images"], 0), np.where(keep, images[out["source"]], 0), atol=1e-5)
  # eta > 0 draws fresh noise at each step: other pixels inside the mask, the same outside.
  noisy = inpaint.make_counterfactuals(pipe7, images, masks, [1, 0], TOKENS, NOUNS[:2], n_samples=2,
                                       mode="channels", mesh=mesh, paste=False, eta=1.0, **FAST)
  np.testing.assert_allclose(np.where(keep, noisy["images"], 0), np.where(keep, images[out["source"]], 0), atol=1e-5)
  assert np.abs(noisy["images"] - out["images"]).max() > 1e-3
  with pytest.raises(SpurjaxError, match="channels"):
    inpaint.make_counterfactuals(pipe3, images, masks, [1, 0], TOKENS, NOUNS[:2], mode="channels", **FAST)
  with pytest.raises(SpurjaxError, match="blended"):
    inpaint.make_counterfactuals(pipe7, images, masks, [1, 0], TOKENS, NOUNS[:2], mode="blended", **FAST)
  with pytest.raises(SpurjaxError, match="ddb.inpaint.mode"):
    inpaint.make_counterfactuals(pipe7, images, masks, [1, 0], TOKENS, NOUNS[:2], mode="sdedit", **FAST)


def test_prompts_and_token_checks(pipe3, tmp_path):
  assert inpaint.class_prompts("a photo of a {token} {noun}", {0: "<c0>", 1: ""}, ("bird", "bird"), 2) == \
      ["a photo of a <c0> bird", "a photo of a bird"]
  assert inpaint.class_prompts("a photo of a {token} {noun}", None, ("bird", "dog"), 2) == \
      ["a photo of a bird", "a photo of a dog"]
  with pytest.raises(SpurjaxError, match="no token for class 1"):
    inpaint.class_prompts("{token} {noun}", {0: "<c0>"}, ("bird", "dog"), 2)
  # attributes: A prompts per class, class-major, with the article
  assert inpaint.class_prompts("a photo of {a_attribute} {token} {noun}", None, ("bird", "dog"), 2,
                               ("red", "orange")) == ["a photo of a red bird", "a photo of an orange bird",
                                                      "a photo of a red dog", "a photo of an orange dog"]
  for template, attrs in (("a photo of {a_attribute} {noun}", ()), ("a photo of a {noun}", ("red",))):
    with pytest.raises(SpurjaxError, match="attributes"):
      inpaint.class_prompts(template, None, ("bird", "dog"), 2, attrs)
  edits = inpaint.plan_edits([0, 1, 0, 1] * 8, 2, 2)
  picks = [inpaint.attribute_of(3, e, 8) for e in edits]
  assert picks == [inpaint.attribute_of(3, e, 8) for e in edits] and len(set(picks)) > 3   # deterministic, varied
  assert picks != [inpaint.attribute_of(4, e, 8) for e in edits]                          # and seeded
  assert {inpaint.attribute_of(3, e, 1) for e in edits} == {0}
  inpaint.check_tokens(pipe3, TOKENS)
  images, masks = _inputs()
  with pytest.raises(SpurjaxError, match="not in the tokenizer"):
    inpaint.make_counterfactuals(pipe3, images, masks, [0, 1], {0: "<c0>", 1: "<c9>"}, NOUNS[:2], **FAST)
  short = types.SimpleNamespace(tokenizer=pipe3.tokenizer,  # tokens added, embedding table not grown
                                text_params=clip_text.init_clip_params(CLIP, jax.random.key(1)))
  with pytest.raises(SpurjaxError, match="was not loaded"):
    inpaint.check_tokens(short, TOKENS)
  with pytest.raises(SpurjaxError, match="masks"):
    inpaint.make_counterfactuals(pipe3, images, masks[:, :4], [0, 1], TOKENS, NOUNS[:2], **FAST)
  with pytest.raises(SpurjaxError, match="n_samples"):
    inpaint.plan_edits([0, 1], 2, 0)
  assert len(inpaint.plan_edits([0, 1, 2], 3, 4)) == 3 * 2 * 4


def test_diffusion_size_uses_the_vae_factor(pipe3):
  assert diffusion_size(pipe3) == (8, 8)
  vae = types.SimpleNamespace(config={})
  latent = types.SimpleNamespace(unet=pipe3.unet, vae=vae, vae_scale_factor=8)
  assert diffusion_size(latent) == (64, 64)


def _stage_ctx(tmp_path, mesh, pipeline):
  cfg = toy_config()
  cfg.ddb.nouns = ("bird", "bird")
  cfg.ddb.inpaint.n_samples = 2
  cfg.ddb.inpaint.num_steps = 2
  cfg.ddb.inpaint.guidance_scale = 2.0
  cfg.ddb.inpaint.batch_size = 4
  cfg.diffusion.path = str(tmp_path / "in-memory")
  return Context(cfg=cfg, workdir=str(tmp_path), table=toy_table(), mesh=mesh, pipeline=pipeline)


def test_inpaint_stage_writes_skips_and_resumes(tmp_path, mesh, pipe3):
  ctx = _stage_ctx(tmp_path, mesh, pipe3)
  selected = select.Selection(k=2, selected={0: np.array([0, 1]), 1: np.array([30])}, psi_ref={}, loss={})
  square = np.zeros((16, 16), bool)
  square[4:12, 4:12] = True
  masks = segment.Masks({0: square, 1: square, 30: np.roll(square, 2, axis=0)}, {})
  tokens = invert.Tokens({0: "<c0>", 1: "<c1>"}, pipe3)
  up = dict(select=selected, segment=masks, invert=tokens)
  rows = run_stage(ctx, inpaint.STAGE, **up)[0].rows
  out = tmp_path / "inpaint"
  assert len(rows) == 3 * 1 * 2 and not (tmp_path / "inpaint.tmp").exists()
  with open(out / "edits.csv", newline="") as f:
    saved = list(csv.DictReader(f))
  assert tuple(saved[0]) == inpaint.CSV_COLUMNS
  assert [int(r["source_index"]) for r in saved] == [0, 0, 1, 1, 30, 30]
  assert [int(r["target_class"]) for r in saved] == [1, 1, 1, 1, 0, 0]
  assert [int(r["sample"]) for r in saved] == [0, 1] * 3
  table = toy_table()
  for r in saved:
    i = int(r["source_index"])
    assert int(r["source_class"]) == table.y[i]
    img = read_image(str(out / r["file"]))
    assert img.shape == (16, 16, 3)
    keep = ~masks.masks[i]
    np.testing.assert_array_equal(img[keep], table.read_image(i)[keep])  # background exactly the original
  first = {r["file"]: (out / r["file"]).read_bytes() for r in saved}
  assert inpaint.read_edits(str(out))[2]["path"] == str(out / saved[2]["file"])

  # A run killed after its first chunk resumes: the missing chunk is regenerated identically, the
  # finished chunk is not recomputed.
  shutil.move(str(out), str(tmp_path / "inpaint.tmp"))
  os.remove(tmp_path / "inpaint.tmp" / "edits.csv")
  for r in saved[4:]:
    os.remove(tmp_path / "inpaint.tmp" / r["file"])
  kept_mtime = os.path.getmtime(tmp_path / "inpaint.tmp" / saved[0]["file"])
  again = run_stage(ctx, inpaint.STAGE, **up)[0].rows
  assert again == rows
  assert {f: (out / f).read_bytes() for f in first} == first
  assert os.path.getmtime(out / saved[0]["file"]) == kept_mtime

  up["select"] = select.Selection(k=2, selected={0: np.array([0, 2]), 1: np.array([30])}, psi_ref={}, loss={})
  with pytest.raises(SpurjaxError, match="no mask"):
    run_stage(_stage_ctx(tmp_path / "c", mesh, pipe3), inpaint.STAGE, **up)


def test_paste_generator_through_the_stage(tmp_path, mesh):
  """`ddb.inpaint.generator=paste`: a class-0 image gets a class-1 donor's object (toy class 1: a bright green
  square) inside its changed region, the rest of the image is untouched, and the region is saved."""
  ctx = _stage_ctx(tmp_path, mesh, None)
  ctx.cfg.ddb.inpaint.generator = "paste"
  ctx.cfg.ddb.inpaint.n_samples = 1
  table = toy_table()
  square = np.zeros((16, 16), bool)
  square[4:12, 4:12] = True
  blob = np.zeros((16, 16), bool)
  blob[6:10, 5:11] = True
  selected = select.Selection(k=2, selected={0: np.array([0, 1]), 1: np.array([30, 31])}, psi_ref={}, loss={})
  masks = segment.Masks({0: blob, 1: blob, 30: square, 31: square}, {})
  edits, runner = run_stage(ctx, inpaint.STAGE, select=selected, segment=masks,
                            invert=invert.Tokens({0: "", 1: ""}, None))
  assert len(edits) == 4 and [r["target_class"] for r in edits.rows] == [1, 1, 0, 0]
  for r in edits.rows:
    img, changed = read_image(r["path"]), read_mask(r["mask_path"])
    src = table.read_image(r["source_index"])
    np.testing.assert_array_equal(img[~changed], src[~changed])
    assert changed.any() and (img[changed] != src[changed]).any()
    if r["target_class"] == 1:
      assert (img[changed][:, 1] >= 250).mean() > 0.3 and (src[:, :, 1] < 250).all()
  assert "diffusion.path" not in runner.summary()


@pytest.mark.parametrize("crop", [0, 24])
def test_redraw_generator_through_the_stage(tmp_path, mesh, crop):
  """`ddb.inpaint.generator=redraw` on the built-in benchmark: each edit is its source scene with an object of the
  target class, a base image framed as its source is (with or without a centre crop), unchanged outside the
  saved changed region; other data, or a benchmark the renderer did not draw, is refused before any work."""
  from spurjax.data import synth
  from spurjax.data.folder import read_folder
  root = tmp_path / "bench"
  synth.generate(str(root), image_size=32, scale=0.02, seed=3, corpus_per_combo=0, workers=1)
  table = read_folder(str(root))
  ctx = _stage_ctx(tmp_path / "w", mesh, None)
  ctx.table, ctx.cfg.ddb.inpaint.generator, ctx.cfg.ddb.inpaint.n_samples = table, "redraw", 2
  ctx.cfg.data.center_crop = crop
  inpaint.check_config(ctx)
  first = {c: np.nonzero((table.y == c) & (table.split == 0))[0][:2] for c in (0, 1)}
  selected = select.Selection(k=2, selected=first, psi_ref={}, loss={})
  masks = segment.Masks({int(i): np.zeros((32, 32), bool) for c in first for i in first[c]}, {})
  edits, runner = run_stage(ctx, inpaint.STAGE, select=selected, segment=masks,
                            invert=invert.Tokens({0: "", 1: ""}, None))
  assert len(edits) == 8 and sorted({r["sample"] for r in edits.rows}) == [0, 1]
  for r in edits.rows:
    img, changed = read_image(r["path"]), read_mask(r["mask_path"])
    src = ctx.sources["eval"](r["source_index"])            # edits are base images, as the sources are
    assert img.shape == src.shape == (16, 16, 3) and r["target_class"] == 1 - table.y[r["source_index"]]
    np.testing.assert_array_equal(img[~changed], src[~changed])
    assert changed.mean() < 0.5
    assert changed.any() and (img[changed] != src[changed]).any()
  a, b = (read_image(r["path"]) for r in edits.rows[:2])     # two samples of one image differ
  assert not np.array_equal(a, b)
  assert "diffusion.path" not in runner.summary()
  ctx.table = toy_table()
  with pytest.raises(SpurjaxError, match="not an image of a benchmark"):
    inpaint.check_config(ctx)
  ctx.table = table
  from spurjax.data.images import save_png
  save_png(table.refs[0], 255 - table.image(0))
  with pytest.raises(SpurjaxError, match="is not what its benchmark's renderer draws"):
    inpaint.check_config(ctx)


def test_masks_that_cover_the_image_are_not_edited(tmp_path, mesh, capsys):
  """A method's mask over more than ddb.segment.max_cover of its image found no object: the segment stage
  says so in one line and lists it; the inpaint stage leaves that image out (and says why when none is left)."""
  from spurjax.ddb.segment.stage import check_config, coverage
  ctx = _stage_ctx(tmp_path, mesh, None)
  ctx.cfg.ddb.inpaint.generator = "paste"
  ctx.cfg.ddb.inpaint.n_samples = 1
  square = np.zeros((16, 16), bool)
  square[4:12, 4:12] = True                  # 25 % of the image
  almost_all = np.ones((16, 16), bool)
  almost_all[:2] = False                     # 88 %
  cov = coverage(ctx.cfg, "attention", [square, almost_all, square, square], [0, 1, 30, 31])
  assert cov["too_large"] == [1] and cov["max_cover"] == 0.75 and abs(cov["max"] - 0.875) < 1e-9
  said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("segment:")]
  assert len(said) == 1 and "1 of 4 attention masks cover more than 75%" in said[0]
  assert coverage(ctx.cfg, "given", [almost_all], [1])["too_large"] == []   # the dataset's own masks are objects
  selected = select.Selection(k=2, selected={0: np.array([0, 1]), 1: np.array([30, 31])}, psi_ref={}, loss={})
  masks = segment.Masks({0: square, 1: almost_all, 30: square, 31: square}, {"coverage": cov})
  edits, _ = run_stage(ctx, inpaint.STAGE, select=selected, segment=masks, invert=invert.Tokens({0: "", 1: ""}, None))
  assert sorted(r["source_index"] for r in edits.rows) == [0, 30, 31]
  none_left = segment.Masks(masks.masks, {"coverage": dict(cov, too_large=[0, 1, 30, 31])})
  ctx_b = _stage_ctx(tmp_path / "b", mesh, None)
  ctx_b.cfg.ddb.inpaint.generator = "paste"
  with pytest.raises(SpurjaxError, match="every mask covers more than ddb.segment.max_cover"):
    run_stage(ctx_b, inpaint.STAGE, select=selected, segment=none_left, invert=invert.Tokens({0: "", 1: ""}, None))
  for bad in (0.0, 1.5, -0.1):
    ctx.cfg.ddb.segment.max_cover = bad
    with pytest.raises(SpurjaxError, match="ddb.segment.max_cover"):
      check_config(ctx)
