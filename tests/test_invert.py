"""Textual inversion: only the new token rows move; learned_embeds files round-trip; bad input fails loudly."""
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from spurjax.diffusion import clip_text, invert, loading, token_embeds, tokenizer as tok_lib, unet as unet_lib
from spurjax.diffusion import vae as vae_lib
from spurjax.errors import SpurjaxError

UNET_CFG = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                attention_head_dim=(2, 2), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), in_channels=4, out_channels=4, sample_size=8)
VAE_CFG = dict(block_out_channels=[4, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16)
CLIP_CFG = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
SCHED = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
         "beta_end": 0.012, "prediction_type": "epsilon"}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  tok_dir = tok_lib.write_clip_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=1000, model_max_length=16)
  k = jax.random.split(jax.random.key(0), 3)
  vcfg = vae_lib.vae_config(VAE_CFG)
  return loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(UNET_CFG),
      unet_params=jax.tree.map(np.asarray, unet_lib.init_unet_params(UNET_CFG, k[0])),
      vae=vae_lib.AutoencoderKL(vcfg), vae_params=vae_lib.init_vae_params(vcfg, k[1]),
      text_encoder=clip_text.CLIPTextModel(clip_text.clip_config(CLIP_CFG)),
      text_params=clip_text.init_clip_params(CLIP_CFG, k[2]), tokenizer=tok_lib.load_tokenizer(tok_dir),
      scheduler_config=SCHED)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  # Class 0 on a 24-px canvas (resized to the model's 16 px), class 1 already at 16 px.
  return {0: rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8),
          1: rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)}


@pytest.fixture(scope="module")
def learned(pipe, images, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ti")
  out, emb = invert.learn_tokens(pipe, images, ["bird", "flower"], steps=2, batch=2, grad_accum=2, lr=5e-2,
                                 workdir=str(workdir), log_every=1, ckpt_every=2)
  return out, emb, workdir


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.slow
def test_only_new_rows_change(pipe, learned):
  out, emb, _ = learned
  assert len(pipe.tokenizer) == 1000  # the input pipeline is untouched
  assert list(emb) == ["<c0>", "<c1>"]
  ids = out.tokenizer.convert_tokens_to_ids(["<c0>", "<c1>"])
  assert ids == [1000, 1001]
  for name in ("unet_params", "vae_params"):
    for (path, a), (_, b) in zip(_leaves(getattr(pipe, name)), _leaves(getattr(out, name))):
      assert np.array_equal(np.asarray(a), np.asarray(b)), (name, path)
  before, after = pipe.text_params, out.text_params
  for (path, a), (_, b) in zip(_leaves(before), _leaves(after)):
    if "token_embedding" in jax.tree_util.keystr(path):
      continue
    assert np.array_equal(np.asarray(a), np.asarray(b)), path
  old = np.asarray(before["embeddings"]["token_embedding"]["embedding"])
  new = np.asarray(after["embeddings"]["token_embedding"]["embedding"])
  assert new.shape == (1002, 16)
  assert np.array_equal(new[:1000], old)  # bitwise: every existing row
  bird, flower = (int(tok_lib.encode(pipe.tokenizer, w)[0, 1]) for w in ("bird", "flower"))
  assert not np.allclose(new[1000], old[bird]) and not np.allclose(new[1001], old[flower])
  assert np.abs(new[1000] - old[bird]).max() < 1.0  # moved from its initialiser, not replaced
  np.testing.assert_array_equal(emb["<c0>"], new[1000])
  np.testing.assert_array_equal(emb["<c1>"], new[1001])


@pytest.mark.slow
def test_workdir_files_and_resume(pipe, images, learned):
  _, emb, workdir = learned
  info = json.loads((workdir / "tokens.json").read_text())
  assert info["effective_lr"] == pytest.approx(5e-2 * 4) and info["tokens"]["<c1>"]["images"] == 2
  assert len((workdir / "loss.jsonl").read_text().splitlines()) == 4  # micro-steps
  single = token_embeds.read_learned_embeds(str(workdir / "learned_embeds_class1.safetensors"))
  assert list(single) == ["<c1>"]
  # Checkpoints hold the trainable embedding table and its optimiser state, not the frozen weights.
  ckpt_bytes = sum(f.stat().st_size for f in (workdir / "ckpt").rglob("*") if f.is_file())
  unet_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(pipe.unet_params))
  table_bytes = np.asarray(pipe.text_params["embeddings"]["token_embedding"]["embedding"]).nbytes
  assert ckpt_bytes < unet_bytes and ckpt_bytes < 10 * table_bytes, (ckpt_bytes, unet_bytes, table_bytes)
  # Rerunning with the same workdir resumes from the last checkpoint: same result, no new steps.
  _, again = invert.learn_tokens(pipe, images, ["bird", "flower"], steps=2, batch=2, grad_accum=2, lr=5e-2,
                                 workdir=str(workdir), log_every=1, ckpt_every=2)
  for t in emb:
    np.testing.assert_array_equal(again[t], emb[t])


@pytest.mark.slow
def test_learned_embeds_round_trip(pipe, learned):
  _, emb, workdir = learned
  loaded = token_embeds.load_learned_embeds(pipe, str(workdir / token_embeds.EMBEDS_FILE))
  table = np.asarray(loaded.text_params["embeddings"]["token_embedding"]["embedding"])
  ids = tok_lib.encode(loaded.tokenizer, "a photo of a <c1> flower")[0]
  assert 1001 in ids.tolist()
  np.testing.assert_array_equal(table[1000], emb["<c0>"])
  np.testing.assert_array_equal(table[1001], emb["<c1>"])
  with pytest.raises(SpurjaxError, match="learned_embeds.safetensors.*already exists"):
    token_embeds.load_learned_embeds(loaded, str(workdir / token_embeds.EMBEDS_FILE))


def test_bad_embeddings_files(pipe, tmp_path):
  missing = tmp_path / "nope.safetensors"
  with pytest.raises(SpurjaxError, match="nope.safetensors: textual-inversion embeddings file not found"):
    token_embeds.load_learned_embeds(pipe, str(missing))
  wide = tmp_path / "wide.safetensors"
  save_file({"<x>": np.ones(7, np.float32)}, str(wide))
  with pytest.raises(SpurjaxError, match="wide.safetensors: embedding of '<x>' has width 7 .* 16"):
    token_embeds.load_learned_embeds(pipe, str(wide))
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"not a safetensors file")
  with pytest.raises(SpurjaxError, match="junk.safetensors: cannot read"):
    token_embeds.load_learned_embeds(pipe, str(junk))
  ints = tmp_path / "ints.safetensors"
  save_file({"<x>": np.ones(16, np.int32)}, str(ints))
  with pytest.raises(SpurjaxError, match="ints.safetensors: embedding of '<x>' must be a float vector"):
    token_embeds.load_learned_embeds(pipe, str(ints))


def test_bad_learn_inputs(pipe, images):
  with pytest.raises(SpurjaxError, match="images of class 0: expected a non-empty uint8"):
    invert.learn_tokens(pipe, {0: np.zeros((2, 16, 16, 3), np.float32)}, ["bird"], steps=1)
  with pytest.raises(SpurjaxError, match="must contain '\\{token\\}'"):
    invert.learn_tokens(pipe, images, ["bird", "flower"], steps=1, templates=("a photo of a {noun}",))
  with pytest.raises(SpurjaxError, match="nouns has 1 entries but class 1"):
    invert.learn_tokens(pipe, images, ["bird"], steps=1)
  with pytest.raises(SpurjaxError, match="'bird' already exists"):
    invert.learn_tokens(pipe, images, ["bird", "flower"], steps=1, placeholder_fmt="bird")


@pytest.mark.slow
def test_inversion_on_an_inpainting_model_whole_image_or_masks(pipe, images):
  """A 9-channel (SD-2-inpainting layout) UNet: plain inversion masks the whole image; with masks the
  token learns to repaint them, which changes what it learns; every other row stays bit-identical."""
  import dataclasses
  cfg9 = {**UNET_CFG, "in_channels": 9}
  inp = dataclasses.replace(pipe, unet=unet_lib.UNet2DConditionModel(cfg9),
                            unet_params=jax.tree.map(np.asarray, unet_lib.init_unet_params(cfg9, jax.random.key(3))))
  assert inp.is_inpaint
  masks = {0: np.zeros((3, 24, 24), bool), 1: np.zeros((2, 16, 16), bool)}
  masks[0][:, 6:18, 4:16] = True
  masks[1][:, 2:10, 5:13] = True
  kw = dict(steps=2, batch=2, grad_accum=1, lr=5e-2)
  whole_out, whole = invert.learn_tokens(inp, images, ["bird", "flower"], **kw)
  boxed_out, boxed = invert.learn_tokens(inp, images, ["bird", "flower"], masks_by_class=masks, mask_weight=4.0, **kw)
  for t in whole:
    assert np.isfinite(boxed[t]).all() and not np.allclose(whole[t], boxed[t])
  old = np.asarray(pipe.text_params["embeddings"]["token_embedding"]["embedding"])
  for out in (whole_out, boxed_out):
    new = np.asarray(out.text_params["embeddings"]["token_embedding"]["embedding"])
    np.testing.assert_array_equal(new[:len(old)], old)
  with pytest.raises(SpurjaxError, match="needs an inpainting UNet"):
    invert.learn_tokens(pipe, images, ["bird", "flower"], masks_by_class=masks, **kw)
  with pytest.raises(SpurjaxError, match="masks of class 1: expected 2 masks"):
    invert.learn_tokens(inp, images, ["bird", "flower"], masks_by_class={0: masks[0], 1: masks[1][:1]}, **kw)
  with pytest.raises(SpurjaxError, match="masks of class 0: a mask is empty"):
    invert.learn_tokens(inp, images, ["bird", "flower"], masks_by_class={0: masks[0] & False, 1: masks[1]}, **kw)


# ----------------------------------------------------------------------------- per-class mode, flips, config


def _table(p):
  return np.asarray(p.text_params["embeddings"]["token_embedding"]["embedding"])


@pytest.mark.slow
def test_per_class_runs_are_independent_and_resume_by_class(pipe, images, tmp_path, monkeypatch):
  """Per-class mode: class c's row learns from class c's images alone, each run in its own folder;
  a class finished before (its folder complete) is read back, not redone; one killed part way
  resumes from its folder's checkpoint."""
  from spurjax.diffusion import invert_runs
  kw = dict(steps=2, batch=2, grad_accum=1, lr=5e-2, mode="per_class", templates="reference", flip=0.5,
            log_every=1, ckpt_every=2)
  work = tmp_path / "ti"
  # A run that finished class 0 only (as if killed before class 1), then the whole run again.
  invert.learn_tokens(pipe, {0: images[0]}, ["bird", "flower"], workdir=str(work), **kw)
  done0 = {f.name: f.stat().st_mtime_ns for f in (work / "class0").rglob("*") if f.is_file()}
  assert len((work / "class0" / "loss.jsonl").read_text().splitlines()) == 2
  out, emb = invert.learn_tokens(pipe, images, ["bird", "flower"], workdir=str(work), **kw)
  assert {f.name: f.stat().st_mtime_ns for f in (work / "class0").rglob("*") if f.is_file()} == done0
  assert len((work / "class1" / "loss.jsonl").read_text().splitlines()) == 2
  info = json.loads((work / "tokens.json").read_text())
  assert info["mode"] == "per_class" and info["flip"] == 0.5 and len(info["templates"]) == 27
  assert info["tokens"]["<c1>"]["folder"] == "class1" and np.isfinite(info["tokens"]["<c1>"]["final_loss"])
  assert [json.loads(r)["class"] for r in (work / "loss.jsonl").read_text().splitlines()] == [0, 0, 1, 1]
  both = token_embeds.read_learned_embeds(str(work / token_embeds.EMBEDS_FILE))
  for t, v in emb.items():
    np.testing.assert_array_equal(both[t], v)
  assert list(token_embeds.read_learned_embeds(str(work / "learned_embeds_class1.safetensors"))) == ["<c1>"]
  # The output pipeline: the tokens at their usual ids, every other row bit-identical, each row moved.
  old, new = _table(pipe), _table(out)
  assert out.tokenizer.convert_tokens_to_ids(["<c0>", "<c1>"]) == [1000, 1001]
  np.testing.assert_array_equal(new[:1000], old)
  for row, word in ((1000, "bird"), (1001, "flower")):
    init = old[int(tok_lib.encode(pipe.tokenizer, word)[0, 1])]
    assert not np.allclose(new[row], init) and np.abs(new[row] - init).max() < 1.0
  # Class 1's images changed: class 0's vector is the same bit for bit, class 1's is not.
  changed = {0: images[0], 1: 255 - images[1]}
  _, other = invert.learn_tokens(pipe, changed, ["bird", "flower"], **kw)
  np.testing.assert_array_equal(other["<c0>"], emb["<c0>"])
  assert not np.allclose(other["<c1>"], emb["<c1>"])
  # Killed in class 1's second step, then run again: it resumes in class1/ and ends where an unkilled run does.
  flips = invert_runs.flips

  def killer(seed, step, n, p, cls=None):
    if cls == 1 and step == 1:
      raise KeyboardInterrupt
    return flips(seed, step, n, p, cls)
  monkeypatch.setattr(invert_runs, "flips", killer)
  with pytest.raises(KeyboardInterrupt):
    invert.learn_tokens(pipe, images, ["bird", "flower"], workdir=str(tmp_path / "killed"), **{**kw, "ckpt_every": 1})
  assert (tmp_path / "killed" / "class0" / "tokens.json").is_file()
  assert not (tmp_path / "killed" / "class1" / "tokens.json").exists()
  assert sorted(p.name for p in (tmp_path / "killed" / "class1" / "ckpt").iterdir() if p.name.isdigit()) == ["1"]
  monkeypatch.setattr(invert_runs, "flips", flips)
  _, resumed = invert.learn_tokens(pipe, images, ["bird", "flower"], workdir=str(tmp_path / "killed"), **kw)
  for t in emb:
    np.testing.assert_array_equal(resumed[t], emb[t])
  # A folder begun with other settings is an error naming them, not silently reused.
  with pytest.raises(SpurjaxError, match=r"class0 holds a run with other settings \(flip\)"):
    invert.learn_tokens(pipe, images, ["bird", "flower"], workdir=str(work), **{**kw, "flip": 0.0})
  assert invert_runs.SETTINGS_FILE in done0 and invert_runs.DONE_FILE in done0


def test_flip_stream_and_masks_flip_with_pixels():
  from spurjax.diffusion import invert_runs, train as dtrain
  draw = invert_runs.flips(3, 7, 4000, 0.5, cls=1)
  np.testing.assert_array_equal(draw, invert_runs.flips(3, 7, 4000, 0.5, cls=1))   # deterministic
  assert 0.47 < draw.mean() < 0.53
  assert not np.array_equal(draw, invert_runs.flips(3, 7, 4000, 0.5, cls=0))      # its own stream per class
  assert not np.array_equal(draw, invert_runs.flips(3, 8, 4000, 0.5, cls=1))      # ... and per step
  assert not invert_runs.flips(3, 7, 50, 0.0).any() and invert_runs.flips(3, 7, 50, 1.0).all()
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
  masks = np.zeros((5, 6, 8), np.float32)
  masks[:, 1:4, :3] = 1.0                  # left-heavy: a mirrored mask is a different mask
  prompt_ids = np.arange(12, dtype=np.int32).reshape(3, 1, 4)
  fn = invert_runs.batch_maker(imgs, np.zeros(5, np.int64), prompt_ids, masks, batch=4, seed=3,
                               template_key=(3, 2, 1), flip=0.5, cls=1)
  seen = set()
  for i in range(6):
    out, idx = fn(i), dtrain.sample_batch_indices(5, 4, 3, i)
    which = invert_runs.flips(3, i, 4, 0.5, cls=1)
    seen.update(which.tolist())
    want_px = np.where(which[:, None, None, None], imgs[idx][:, :, ::-1], imgs[idx])
    want_m = np.where(which[:, None, None], masks[idx][:, :, ::-1], masks[idx])
    np.testing.assert_array_equal(out["pixels"], want_px)
    np.testing.assert_array_equal(out["masks"], want_m)
  assert seen == {True, False}
  plain = invert_runs.batch_maker(imgs, np.zeros(5, np.int64), prompt_ids, masks, batch=4, seed=3,
                                  template_key=(3, 2, 1))(0)
  np.testing.assert_array_equal(plain["pixels"], imgs[dtrain.sample_batch_indices(5, 4, 3, 0)])


@pytest.mark.parametrize("key,value,message", [
    ("mode", "each", "config ddb.invert.mode = 'each'; valid: per_class, joint"),
    ("templates", "long", "config ddb.invert.templates = 'long'; valid: reference, short"),
    ("flip", 1.5, "config ddb.invert.flip = 1.5 must be a probability in [0, 1]"),
])
def test_invert_config_errors_name_the_key(key, value, message):
  import types

  from spurjax.config_base import base_config
  from spurjax.ddb.invert import check_config
  cfg = base_config()
  cfg.ddb.invert[key] = value
  with pytest.raises(SpurjaxError) as err:
    check_config(types.SimpleNamespace(cfg=cfg))
  assert str(err.value) == message and "\n" not in str(err.value)


def test_invert_presets():
  from spurjax.config_base import base_config, paper_ddb
  base = base_config().ddb.invert
  assert (base.mode, base.templates, base.flip) == ("joint", "short", 0.0)
  paper = paper_ddb(base_config(), "bird").ddb.invert
  assert (paper.mode, paper.templates, paper.flip) == ("per_class", "reference", 0.5)
  assert invert.TEMPLATES["reference"][0] == "a photo of a {token} {noun}" and len(invert.REFERENCE_TEMPLATES) == 27
  assert invert.TEMPLATES["short"] == invert.DEFAULT_TEMPLATES


@pytest.mark.slow
def test_joint_mode_named_explicitly_is_the_default(pipe, images, learned):
  """mode=joint, templates=short, flip=0: the same vectors as the default call (the joint path)."""
  _, emb, _ = learned
  _, again = invert.learn_tokens(pipe, images, ["bird", "flower"], steps=2, batch=2, grad_accum=2, lr=5e-2,
                                 mode="joint", templates="short", flip=0.0)
  for t in emb:
    np.testing.assert_array_equal(again[t], emb[t])
