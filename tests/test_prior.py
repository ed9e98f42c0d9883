"""Prior training from an imagefolder, the written pipeline, the CLIs, and bad imagefolders."""
import json
import os

import numpy as np
import pytest

from spurjax import cli
from spurjax.config_util import load_config
from spurjax.data import boxes as box_lib, imagefolder, synth
from spurjax.diffusion import builtin, loading, pipeline_sampling, prior, token_embeds, tokenizer as tok_lib
from spurjax.errors import SpurjaxError

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A tiny built-in benchmark (16 px) with its captioned corpus."""
  root = tmp_path_factory.mktemp("synth") / "bench"
  synth.generate(str(root), image_size=16, scale=0.01, val_per_group=1, test_per_group=1, corpus_per_combo=3)
  return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  out = tmp_path_factory.mktemp("prior") / "p"
  rc = cli.main(["prior", "train", "--data", str(data / "corpus"), "--out", str(out),
                 "--config", os.path.join(CONFIGS, "prior_synth.py:tiny"), "--config.train.steps=3"])
  assert rc == 0
  return out


@pytest.mark.slow
def test_trained_prior_loads_and_samples(trained):
  p = loading.load_pipeline(trained)
  assert p.vae is None and p.unet.config["sample_size"] == 16 and p.unet.config["in_channels"] == 7 and p.is_inpaint
  assert p.text_encoder.config["max_position_embeddings"] == 16 == p.tokenizer.model_max_length
  info = json.loads((trained / "training.json").read_text())
  assert info["steps"] == 3 and info["images"] == 12 and np.isfinite(info["final_loss"])
  work = str(trained) + ".work"
  assert len(open(os.path.join(work, "loss.jsonl")).read().splitlines()) == 2  # log_every=2: steps 2 and 3
  x = pipeline_sampling.sample_images(p, ["a photo of a bird on land", "a flower on water"], num_steps=3, guidance_scale=2.0)
  assert x.shape == (2, 16, 16, 3) and np.all(np.isfinite(x)) and 0.0 <= x.min() and x.max() <= 1.0
  assert np.abs(x[0] - x[1]).max() > 0


@pytest.mark.slow
def test_invert_cli_on_trained_prior(trained, data, tmp_path):
  work = tmp_path / "ti"
  rc = cli.main(["invert", "--config", os.path.join(CONFIGS, "invert_synth.py:tiny"), "--workdir", str(work),
                 f"--config.diffusion.path={trained}", f"--config.data.root={data}", "--config.data.kind=folder",
                 "--config.invert.steps=2", "--config.invert.batch_size=2"])
  assert rc == 0
  emb = token_embeds.read_learned_embeds(str(work / token_embeds.EMBEDS_FILE))
  assert sorted(emb) == ["<c0>", "<c1>"] and emb["<c0>"].shape == (16,)
  info = json.loads((work / "tokens.json").read_text())
  assert info["tokens"]["<c0>"]["noun"] == "bird" and info["tokens"]["<c1>"]["initializer"] == "flower"
  p = token_embeds.load_learned_embeds(loading.load_pipeline(trained), str(work / token_embeds.EMBEDS_FILE))
  assert len(p.tokenizer) == len(loading.load_pipeline(trained).tokenizer) + 2


def test_config_vocabulary_keeps_words_whole(tmp_path):
  cfg = load_config(os.path.join(CONFIGS, "prior_synth.py"))
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(tmp_path, vocab_size=cfg.text.vocab_size,
                                                            model_max_length=cfg.text.max_length))
  for word in ("a", "photo", "of", "bird", "flower", "on", "land", "water", "picture", "red", "blue", "green"):
    assert tok.tokenize(word) == [word + "</w>"], word
  ids = tok_lib.encode(tok, "a photo of an orange flower on water")[0]
  assert ids.shape == (16,) and (ids == tok.eos_token_id).sum() >= 1


def _folder(tmp_path, rows, kind="csv", make_images=True):
  root = tmp_path / "folder"
  (root / "images").mkdir(parents=True)
  if make_images:
    from PIL import Image
    for i in range(2):
      Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(root / "images" / f"{i}.png")
  if kind == "csv":
    (root / "metadata.csv").write_text(rows)
  else:
    (root / "metadata.jsonl").write_text(rows)
  return root


def test_imagefolder_reading(tmp_path):
  root = _folder(tmp_path, '{"file_name": "images/0.png", "text": "a bird"}\n\n'
                           '{"file_name": "images/1.png", "text": "a flower", "extra": 1}\n', kind="jsonl")
  paths, texts = imagefolder.read_imagefolder(str(root))
  assert texts == ["a bird", "a flower"] and paths[1].endswith("images/1.png")
  imgs = imagefolder.load_images(paths, 4)
  assert imgs.shape == (2, 4, 4, 3) and imgs.dtype == np.uint8 and imgs[1].min() == 50


@pytest.mark.parametrize("rows,kind,match", [
    ("file_name,caption\nimages/0.png,a bird\n", "csv", r"metadata.csv: missing column 'text' \(have: file_name, caption\)"),
    ("file_name,text\nimages/0.png,a bird\nimages/7.png,a flower\n", "csv", r"metadata.csv: row 3: image not found: .*7.png"),
    ("file_name,text\nimages/0.png,\n", "csv", r"metadata.csv: row 2: empty 'text'"),
    ("file_name,text\n", "csv", r"metadata.csv: no rows"),
    ('{"file_name": "images/0.png", "text": "a"}\n{oops\n', "jsonl", r"metadata.jsonl: line 2: invalid JSON"),
    ('{"text": "a"}\n', "jsonl", r"metadata.jsonl: line 1: missing column 'file_name'"),
])
def test_bad_imagefolders(tmp_path, rows, kind, match):
  root = _folder(tmp_path, rows, kind)
  with pytest.raises(SpurjaxError, match=match):
    imagefolder.read_imagefolder(str(root))


def test_missing_folder_and_metadata(tmp_path, capsys):
  with pytest.raises(SpurjaxError, match="imagefolder not found"):
    imagefolder.read_imagefolder(str(tmp_path / "nope"))
  with pytest.raises(SpurjaxError, match="no metadata.csv or metadata.jsonl"):
    imagefolder.read_imagefolder(str(tmp_path))
  rc = cli.main(["prior", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--config", os.path.join(CONFIGS, "prior_synth.py:tiny")])
  assert rc == 2 and "no metadata.csv or metadata.jsonl" in capsys.readouterr().err
  assert cli.main(["prior", "fit"]) == 2
  assert cli.main(["prior", "train", "--data", "x", "--out", "y", "--bogus"]) == 2


def test_resolve_diffusion_path(tmp_path):
  assert builtin.resolve_diffusion_path(str(tmp_path)) == str(tmp_path)
  with pytest.raises(SpurjaxError, match="diffusion.path: no diffusion model"):
    builtin.resolve_diffusion_path("")
  with pytest.raises(SpurjaxError, match="directory not found"):
    builtin.resolve_diffusion_path(str(tmp_path / "nope"))
  assert builtin.builtin_prior_path().endswith(os.path.join("spurjax", "assets", "prior"))


def test_shipped_prior():
  path = builtin.builtin_prior_path()
  if not os.path.isfile(os.path.join(path, "model_index.json")):
    pytest.skip("the built-in prior is not installed")
  assert builtin.resolve_diffusion_path("builtin") == path
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  assert size <= 25 * 2**20
  p = loading.load_pipeline(path)
  assert p.vae is None and len(p.tokenizer) == p.text_encoder.config["vocab_size"]
  assert os.path.isfile(os.path.join(path, "README.md"))


# ----------------------------------------------------------------------------- inpainting prior


@pytest.mark.slow
def test_trained_prior_is_inpainting_and_used_object_masks(trained, data):
  info = json.loads((trained / "training.json").read_text())
  assert info["object_masks"] is True and info["steps_this_run"] == 3 and info["images_per_s_this_run"] > 0
  p = loading.load_pipeline(trained)
  img = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  m = np.zeros((2, 16, 16), np.float32)
  m[:, 4:12, 4:12] = 1
  out = pipeline_sampling.inpaint_images(p, img, m, ["a photo of a bird", "a photo of a flower"], num_steps=3)
  assert out.shape == img.shape
  np.testing.assert_allclose(out[:, m[0] < 0.5], img[:, m[0] < 0.5], atol=1e-6)  # the known region is kept
  assert np.abs(out[:, m[0] > 0.5] - img[:, m[0] > 0.5]).max() > 0.05


@pytest.mark.slow
def test_plain_captioned_corpus_trains_on_whole_images_and_random_boxes(data, tmp_path, capsys):
  import csv
  import shutil
  corpus = tmp_path / "plain"
  shutil.copytree(data / "corpus", corpus)
  with open(corpus / "metadata.csv") as f:
    rows = list(csv.DictReader(f))
  with open(corpus / "metadata.csv", "w", newline="") as f:   # only file_name and text, as real corpora
    w = csv.DictWriter(f, ["file_name", "text"])
    w.writeheader()
    w.writerows({"file_name": r["file_name"], "text": r["text"]} for r in rows)
  out = tmp_path / "p"
  rc = cli.main(["prior", "train", "--data", str(corpus), "--out", str(out),
                 "--config", os.path.join(CONFIGS, "prior_synth.py:tiny"), "--config.train.steps=1"])
  assert rc == 0
  said = [line for line in capsys.readouterr().out.splitlines() if "no object masks" in line]
  assert len(said) == 1 and "random boxes" in said[0]
  info = json.loads((out / "training.json").read_text())
  mix = info["mask_mix"]
  assert info["object_masks"] is False and mix["box"] == mix["square"] == mix["aspect"] == 0
  assert mix["random"] > 0 and mix["full"] > 0 and abs(sum(mix.values()) - 1) < 1e-9
  masks = prior.training_masks(2000, None, 16, np.random.default_rng(0), prior.plain_corpus_mix(
      prior.mask_mix({"full": 1, "box": 1, "square": 1, "aspect": 0, "random": 1})))
  assert abs((masks.sum((1, 2)) == 16 * 16).mean() - 0.25) < 0.04   # full keeps its share; the rest random boxes


def test_mask_paths_are_read_and_checked(tmp_path):
  root = _folder(tmp_path, "file_name,text\nimages/0.png,a bird\nimages/1.png,a flower\n")
  assert imagefolder.read_mask_paths(str(root)) is None
  (root / "metadata.csv").write_text("file_name,text,mask_file_name\nimages/0.png,a bird,images/1.png\n"
                                     "images/1.png,a flower,masks/9.png\n")
  with pytest.raises(SpurjaxError, match=r"row 3: mask not found: .*9.png"):
    imagefolder.read_mask_paths(str(root))


def test_boxes_squares_and_inference_masks():
  m = np.zeros((1, 16, 16), bool)
  m[0, 3:6, 2:12] = True          # a wide object: rows 3..5, cols 2..11
  box = box_lib.object_boxes(m)[0]
  assert tuple(box) == (3, 2, 6, 12)
  assert tuple(box_lib.object_boxes(np.zeros((1, 16, 16), bool))[0]) == (0, 0, 16, 16)
  assert box_lib.grow_box(box, 2, 16) == (1, 0, 8, 14)
  sq = box_lib.square_box(box_lib.grow_box(box, 2, 16), 16)
  assert sq[2] - sq[0] == sq[3] - sq[1] == 14 and sq[0] >= 0 and sq[2] <= 16
  assert box_lib.square_box((0, 0, 2, 16), 16) == (0, 0, 16, 16)     # shifted into the image
  assert box_lib.inference_mask(m[0], "object").sum() == m.sum()
  assert box_lib.inference_mask(m[0], "box", grow=2).sum() == 7 * 14
  assert box_lib.inference_mask(m[0], "square", grow=2).sum() == 14 * 14
  with pytest.raises(SpurjaxError, match="mask kind"):
    box_lib.inference_mask(m[0], "blob")


def test_training_masks_mix():
  rng = np.random.default_rng(0)
  size, n = 32, 400
  boxes = np.tile(np.asarray([[10, 4, 18, 24]]), (n, 1))   # a wide 8 x 20 object box
  for kind in prior.MASK_KINDS:
    probs = np.asarray([k == kind for k in prior.MASK_KINDS], float)
    masks = prior.training_masks(n, boxes, size, rng, probs, grow=(1, 3))
    assert masks.shape == (n, size, size) and set(np.unique(masks)) <= {0.0, 1.0}
    got = box_lib.object_boxes(masks > 0.5)
    h, w = got[:, 2] - got[:, 0], got[:, 3] - got[:, 1]
    assert np.all(masks.sum((1, 2)) == h * w)                      # every mask is one box
    inside = (got[:, 0] <= 10) & (got[:, 1] <= 4) & (got[:, 2] >= 18) & (got[:, 3] >= 24)
    if kind == "full":
      assert np.all(masks == 1)
    elif kind == "box":
      assert inside.all() and set(h - 8) <= {2, 4, 6} and set(w - 20) <= {2, 4, 6}
    elif kind == "square":
      assert inside.all() and np.all(h == w)
    elif kind == "aspect":
      r = h / w
      assert inside.all() and r.min() < 0.6 and r.max() > 1.3 and r.min() >= 0.4 and r.max() <= 2.1
    else:
      assert not inside.all() and h.min() >= 8 and h.max() <= 24
  probs = prior.mask_mix({"full": 1, "box": 1, "square": 2, "aspect": 0, "random": 0})
  np.testing.assert_allclose(probs, [0.25, 0.25, 0.5, 0, 0])
  kinds = prior.training_masks(4000, boxes[:1].repeat(4000, 0), size, rng, probs)
  assert abs((kinds.sum((1, 2)) == size * size).mean() - 0.25) < 0.03
  with pytest.raises(SpurjaxError, match="box masks need object masks"):
    prior.training_masks(4, None, size, rng, [0, 1, 0, 0, 0])
  assert prior.training_masks(4, None, size, rng, [1, 1, 0, 0, 0]).sum() == 4 * size * size
  with pytest.raises(SpurjaxError, match="must be >= 0"):
    prior.mask_mix({"full": -1, "box": 1})


def test_inpainting_loss_feeds_mask_and_masked_image():
  import jax
  import jax.numpy as jnp
  from spurjax.diffusion import schedulers, train as dtrain

  seen = {}

  class Unet:
    config = {"in_channels": 7, "out_channels": 3}

    def apply(self, variables, x, t, ctx):
      seen["x"] = x
      return jnp.zeros(x.shape[:3] + (3,))

  class Text:
    def apply(self, variables, ids):
      return jnp.zeros(ids.shape + (4,))

  model = dtrain.Model(Unet(), Text(), None, 1.0, schedulers.make_schedule({"prediction_type": "epsilon"}))
  assert model.inpaint
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  masks = np.zeros((2, 8, 8), np.float32)
  masks[:, 2:5, 3:7] = 1
  ids = np.zeros((2, 5), np.int32)
  loss = dtrain.diffusion_loss(model, {"unet": {}, "text": {}}, pixels, ids, jax.random.key(0), masks=masks)
  x = np.asarray(seen["x"])
  assert x.shape == (2, 8, 8, 7)
  np.testing.assert_array_equal(x[..., 3], masks)
  img = pixels / 127.5 - 1
  np.testing.assert_allclose(x[..., 4:], img * (1 - masks[..., None]), atol=1e-6)
  # Without masks the whole image is masked (text-to-image, textual inversion).
  dtrain.diffusion_loss(model, {"unet": {}, "text": {}}, pixels, ids, jax.random.key(0))
  assert np.all(np.asarray(seen["x"])[..., 3] == 1) and np.all(np.asarray(seen["x"])[..., 4:] == 0)
  # The zero prediction's loss is the noise's second moment; weighting the mask changes it.
  w = dtrain.diffusion_loss(model, {"unet": {}, "text": {}}, pixels, ids, jax.random.key(0), masks=masks,
                            mask_weight=5.0)
  assert np.isfinite(float(loss)) and abs(float(w) - float(loss)) > 1e-4
  snr = dtrain.diffusion_loss(model, {"unet": {}, "text": {}}, pixels, ids, jax.random.key(0), masks=masks,
                              min_snr_gamma=5.0)
  assert float(snr) < float(loss)


@pytest.mark.slow
def test_bench_prior_runs_on_a_tiny_prior(trained, data, tmp_path, capsys):
  from spurjax.bench import prior as bench_prior
  rc = bench_prior.main(["--prior", str(trained), "--data", str(data), "--n-per-combo", "1", "--n-inpaint", "2",
                         "--steps", "2", "--clf-epochs", "1", "--clf-batch-size", "4", "--ti-steps", "1", "--ti-images", "2",
                         "--diffedit-draws", "2", "--workdir", str(tmp_path / "b")])
  assert rc == 0
  rec = json.loads((tmp_path / "b" / "bench_prior.json").read_text())
  for label in ("learned token", "initialiser token", "class word", "same class, class word"):
    assert 0.0 <= rec["inpaint"][f"all ({label})"] <= 1.0
    assert 0.0 <= rec["inpaint"][f"blob ({label})"] <= 1.0   # the strict judge (default) can say "blob"
  assert rec["judge"] == "strict" and 0.0 <= rec["txt2img_blob"] <= 1.0
  assert rec["inpaint_mask"]["kind"] == "square" and rec["prior_train_images_per_s"] > 0
  assert 0.0 <= rec["diffedit"]["iou_mask"] <= 1.0 and 0.0 <= rec["diffedit"]["iou_box"] <= 1.0
  assert 0.0 <= rec["diffedit"]["iou_refined"] <= 1.0 and rec["diffedit"]["refine_band"] == "1,4"
  out = capsys.readouterr().out
  assert "colour refinement (band 1,4 x mean) IoU" in out
  with pytest.raises(SpurjaxError, match="--diffedit-refine: 0 <= low < high"):
    bench_prior.main(["--prior", str(trained), "--diffedit-refine", "4,1", "--workdir", str(tmp_path / "c")])
  assert not (tmp_path / "c").exists()
  assert "a photo of a <c1> flower" in out and "'a photo of a flower' (class word)" in out
  assert "'a photo of a bird' (same class, class word)" in out


def test_object_weight_and_cosine_lr():
  import jax
  import jax.numpy as jnp
  from spurjax.diffusion import schedulers, train as dtrain

  class Unet:
    config = {"in_channels": 7, "out_channels": 3}

    def apply(self, variables, x, t, ctx):
      return jnp.zeros(x.shape[:3] + (3,))

  class Text:
    def apply(self, variables, ids):
      return jnp.zeros(ids.shape + (4,))

  model = dtrain.Model(Unet(), Text(), None, 1.0, schedulers.make_schedule({"prediction_type": "epsilon"}))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  ids = np.zeros((2, 5), np.int32)
  args = (model, {"unet": {}, "text": {}}, pixels, ids, jax.random.key(0))
  plain = float(dtrain.diffusion_loss(*args))
  # An object mask over every pixel weights them all alike: the loss is unchanged.
  full = float(dtrain.diffusion_loss(*args, objects=np.ones((2, 8, 8), bool), object_weight=8.0))
  np.testing.assert_allclose(full, plain, rtol=1e-6)
  part = np.zeros((2, 8, 8), bool)
  part[:, 2:4, 2:5] = True
  assert abs(float(dtrain.diffusion_loss(*args, objects=part, object_weight=8.0)) - plain) > 1e-4
  assert float(dtrain.diffusion_loss(*args, objects=part, object_weight=1.0)) == plain
  # object_t_max gates the weight by timestep: the loss draws t from its key's second split.
  t = np.asarray(schedulers.random_timesteps(model.sched, jax.random.split(jax.random.key(0), 5)[1], 2))
  n = model.sched.num_train_timesteps
  weighted = float(dtrain.diffusion_loss(*args, objects=part, object_weight=8.0))
  above = float(dtrain.diffusion_loss(*args, objects=part, object_weight=8.0, object_t_max=(t.max() + 1) / n))
  below = float(dtrain.diffusion_loss(*args, objects=part, object_weight=8.0, object_t_max=t.min() / n))
  assert above == weighted and below == plain
  # Cosine decay: the last updates of Adam shrink to nothing; a constant lr keeps them.
  from ml_collections import ConfigDict
  t = ConfigDict({"lr_schedule": "cosine", "steps": 12, "warmup_steps": 2, "end_lr_frac": 0.0})
  assert prior._decay(t) == {"decay_steps": 10, "end_lr_frac": 0.0}
  t.lr_schedule = "linear"
  with pytest.raises(SpurjaxError, match="train.lr_schedule"):
    prior._decay(t)
  for kw, last_zero in (({"decay_steps": 10}, True), ({}, False)):
    tx = dtrain.make_tx(lr=0.1, warmup_steps=2, **kw)
    p = {"w": jnp.ones(3)}
    state = tx.init(p)
    for _ in range(13):  # the 13th update runs at step 12 = warmup 2 + decay 10
      upd, state = tx.update({"w": jnp.ones(3)}, state, p)
    assert (float(jnp.abs(upd["w"]).max()) < 1e-7) == last_zero


def test_bad_training_settings_fail_before_anything_is_written(data, tmp_path, capsys):
  base = ["prior", "train", "--data", str(data / "corpus"), "--out", str(tmp_path / "p"),
          "--config", os.path.join(CONFIGS, "prior_synth.py:tiny")]
  assert cli.main(base + ["--config.train.lr_schedule=linear"]) == 2
  err = capsys.readouterr().err
  assert "config train.lr_schedule='linear' must be 'constant' or 'cosine'" in err and err.strip().count("\n") == 0
  assert not os.listdir(tmp_path)
  assert cli.main(base + ["--config.train.object_t_max=1.5"]) == 2
  err = capsys.readouterr().err
  assert "config train.object_t_max=1.5 must be in (0, 1]" in err and err.strip().count("\n") == 0
  assert not os.listdir(tmp_path)
