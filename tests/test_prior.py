"""Prior training from an imagefolder, the written pipeline, the CLIs, and bad imagefolders."""
import json
import os

import numpy as np
import pytest

from spurjax import cli
from spurjax.config_util import load_config
from spurjax.data import synth
from spurjax.diffusion import invert, loading, prior, tokenizer as tok_lib
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


def test_trained_prior_loads_and_samples(trained):
  p = loading.load_pipeline(trained)
  assert p.vae is None and p.unet.config["sample_size"] == 16 and p.unet.config["in_channels"] == 3
  assert p.text_encoder.config["max_position_embeddings"] == 16 == p.tokenizer.model_max_length
  info = json.loads((trained / "training.json").read_text())
  assert info["steps"] == 3 and info["images"] == 12 and np.isfinite(info["final_loss"])
  work = str(trained) + ".work"
  assert len(open(os.path.join(work, "loss.jsonl")).read().splitlines()) == 2  # log_every=2: steps 2 and 3
  x = prior.sample_images(p, ["a photo of a bird on land", "a flower on water"], num_steps=3, guidance_scale=2.0)
  assert x.shape == (2, 16, 16, 3) and np.all(np.isfinite(x)) and 0.0 <= x.min() and x.max() <= 1.0
  assert np.abs(x[0] - x[1]).max() > 0


def test_invert_cli_on_trained_prior(trained, data, tmp_path):
  work = tmp_path / "ti"
  rc = cli.main(["invert", "--config", os.path.join(CONFIGS, "invert_synth.py:tiny"), "--workdir", str(work),
                 f"--config.diffusion.path={trained}", f"--config.data.root={data}", "--config.data.kind=folder",
                 "--config.invert.steps=2", "--config.invert.batch_size=2"])
  assert rc == 0
  emb = invert.read_learned_embeds(str(work / invert.EMBEDS_FILE))
  assert sorted(emb) == ["<c0>", "<c1>"] and emb["<c0>"].shape == (16,)
  info = json.loads((work / "tokens.json").read_text())
  assert info["tokens"]["<c0>"]["noun"] == "bird" and info["tokens"]["<c1>"]["initializer"] == "flower"
  p = invert.load_learned_embeds(loading.load_pipeline(trained), str(work / invert.EMBEDS_FILE))
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
  paths, texts = prior.read_imagefolder(str(root))
  assert texts == ["a bird", "a flower"] and paths[1].endswith("images/1.png")
  imgs = prior.load_images(paths, 4)
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
    prior.read_imagefolder(str(root))


def test_missing_folder_and_metadata(tmp_path, capsys):
  with pytest.raises(SpurjaxError, match="imagefolder not found"):
    prior.read_imagefolder(str(tmp_path / "nope"))
  with pytest.raises(SpurjaxError, match="no metadata.csv or metadata.jsonl"):
    prior.read_imagefolder(str(tmp_path))
  rc = cli.main(["prior", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--config", os.path.join(CONFIGS, "prior_synth.py:tiny")])
  assert rc == 2 and "no metadata.csv or metadata.jsonl" in capsys.readouterr().err
  assert cli.main(["prior", "fit"]) == 2
  assert cli.main(["prior", "train", "--data", "x", "--out", "y", "--bogus"]) == 2


def test_resolve_diffusion_path(tmp_path):
  assert prior.resolve_diffusion_path(str(tmp_path)) == str(tmp_path)
  with pytest.raises(SpurjaxError, match="diffusion.path: no diffusion model"):
    prior.resolve_diffusion_path("")
  with pytest.raises(SpurjaxError, match="directory not found"):
    prior.resolve_diffusion_path(str(tmp_path / "nope"))
  assert prior.builtin_prior_path().endswith(os.path.join("spurjax", "assets", "prior"))


def test_shipped_prior():
  path = prior.builtin_prior_path()
  if not os.path.isfile(os.path.join(path, "model_index.json")):
    pytest.skip("the built-in prior is not installed")
  assert prior.resolve_diffusion_path("builtin") == path
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  assert size <= 25 * 2**20
  p = loading.load_pipeline(path)
  assert p.vae is None and len(p.tokenizer) == p.text_encoder.config["vocab_size"]
  assert os.path.isfile(os.path.join(path, "README.md"))
