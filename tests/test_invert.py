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
