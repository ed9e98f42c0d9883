"""`diffusion.inpaint_path`: tokens learned on one model, inpainting with a second (SD-2-base + SD-2-inpainting)."""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from helpers import run_stage
from spurjax.ddb import inpaint, invert, segment, select
from spurjax.diffusion import clip_text, loading, token_embeds, tokenizer as tok_lib
from spurjax.errors import SpurjaxError
from spurjax.stages import fingerprint
from spurjax import sharding
from test_inpaint_stage import CLIP, _stage_ctx, tiny_pipeline

UP = {"select": "s", "invert": "i", "segment": "m"}   # upstream fingerprints

pytest.importorskip("transformers")


def _base(directory):
  """A 4-channel-layout base model (3-channel pixel UNet here) whose tokenizer has no learned tokens yet."""
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(directory / "tok", vocab_size=CLIP["vocab_size"]))
  pipe = tiny_pipeline(directory / "p", 3)
  return dataclasses.replace(pipe, tokenizer=tok, text_params=clip_text.resize_token_embeddings(
      clip_text.init_clip_params(CLIP, jax.random.key(5)), len(tok)))


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("two")
  base = _base(root / "base")
  second = _base(root / "second")              # an inpainting model: own UNet (7 channels), own text weights
  second = dataclasses.replace(second, unet=tiny_pipeline(root / "u", 7).unet,
                               unet_params=tiny_pipeline(root / "u2", 7).unet_params)
  folder = loading.save_pipeline(second, root / "inpainting")
  rows = {"<c0>": np.full(CLIP["hidden_size"], 0.5, np.float32), "<c1>": np.full(CLIP["hidden_size"], -0.25, np.float32)}
  embeds = token_embeds.save_learned_embeds(rows, str(root / token_embeds.EMBEDS_FILE))
  return base, token_embeds.load_learned_embeds(base, embeds), folder, embeds, rows


def test_transfer_moves_exactly_the_learned_rows(models):
  base, learned, folder, embeds, rows = models
  target = loading.load_pipeline(folder)
  moved = token_embeds.transfer_tokens(learned, target, embeds)
  old = np.asarray(target.text_params["embeddings"]["token_embedding"]["embedding"])
  new = np.asarray(moved.text_params["embeddings"]["token_embedding"]["embedding"])
  ids = [moved.tokenizer.convert_tokens_to_ids(t) for t in rows]
  assert ids == [learned.tokenizer.convert_tokens_to_ids(t) for t in rows]   # same ids as where they were learned
  for t, i in zip(rows, ids):
    np.testing.assert_array_equal(new[i], rows[t])
  np.testing.assert_array_equal(new[:len(old)], old)                         # every other row bit-identical
  assert new.shape[0] == len(old) + len(rows)


def test_transfer_refuses_other_widths_and_vocabularies(models, tmp_path):
  base, learned, folder, embeds, _ = models
  target = loading.load_pipeline(folder)
  wide = dataclasses.replace(target, text_params=clip_text.init_clip_params({**CLIP, "hidden_size": 8},
                                                                            jax.random.key(0)))
  with pytest.raises(SpurjaxError, match=r"base and second: text encoders differ in width \(16 vs 8\)"):
    token_embeds.transfer_tokens(learned, wide, embeds, where=("base", "second"))
  small = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(tmp_path / "tok", vocab_size=CLIP["vocab_size"] - 50))
  with pytest.raises(SpurjaxError, match="base and second: tokenizers differ in vocabulary"):
    token_embeds.transfer_tokens(learned, dataclasses.replace(target, tokenizer=small), embeds, where=("base", "second"))


@pytest.mark.slow
def test_inpaint_stage_uses_the_second_model(models, tmp_path, mesh):
  base, learned, folder, embeds, _ = models
  ctx = _stage_ctx(tmp_path, mesh, base)
  ctx.cfg.diffusion.inpaint_path = str(folder)
  ctx.cfg.ddb.inpaint.mode = "auto"                                       # channels: the second UNet's 7 inputs
  assert ctx.load_inpaint_pipeline().is_inpaint and not ctx.load_pipeline().is_inpaint
  square = np.zeros((16, 16), bool)
  square[4:12, 4:12] = True
  up = dict(select=select.Selection(k=1, selected={0: np.array([0]), 1: np.array([30])}, psi_ref={}, loss={}),
            segment=segment.Masks({0: square, 30: square}, {}),
            invert=invert.Tokens({0: "<c0>", 1: "<c1>"}, learned, embeds))
  edits, _ = run_stage(ctx, inpaint.STAGE, **up)
  assert len(edits.rows) == 4
  ctx2 = _stage_ctx(tmp_path / "b", mesh, base)                            # only the second model differs
  assert ctx2.inpaint_digest == ctx2.diffusion_digest == ctx.diffusion_digest != ctx.inpaint_digest
  assert fingerprint(inpaint.STAGE, ctx, UP)[0] != fingerprint(inpaint.STAGE, ctx2, UP)[0]
  ctx3 = _stage_ctx(tmp_path / "c", mesh, base)
  ctx3.cfg.diffusion.inpaint_path = str(tmp_path / "missing")
  with pytest.raises(SpurjaxError, match="config diffusion.inpaint_path: directory not found"):
    ctx3.inpaint_dir


def test_mismatched_text_encoders_fail_before_any_work(models, tmp_path):
  base, _, folder, _, _ = models
  base_dir = loading.save_pipeline(base, tmp_path / "base")
  token_embeds.check_transferable(base_dir, folder)                                   # same width and vocabulary: fine
  wide_dir = tmp_path / "wide"                                               # only its config is read
  shutil.copytree(folder, wide_dir)
  config = loading.read_json(wide_dir / "text_encoder" / "config.json")
  (wide_dir / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_size": 8}))
  with pytest.raises(SpurjaxError, match=r"text encoders differ in width \(16 vs 8\)"):
    token_embeds.check_transferable(base_dir, wide_dir, where=("a", "b"))
  tok_lib.write_clip_tokenizer(tmp_path / "small" / "tokenizer", vocab_size=CLIP["vocab_size"] - 50)
  shutil.copytree(folder / "text_encoder", tmp_path / "small" / "text_encoder")
  with pytest.raises(SpurjaxError, match=r"a and b: tokenizers differ in vocabulary"):
    token_embeds.check_transferable(base_dir, tmp_path / "small", where=("a", "b"))
