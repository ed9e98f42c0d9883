"""`spurjax run` end to end on a tiny benchmark and a tiny diffusion model saved to disk."""
import json
import os

import jax
import pytest

from spurjax import cli
from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, unet as unet_lib

pytest.importorskip("transformers")

CLIP = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
UNET = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
            attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), in_channels=3, out_channels=3, sample_size=16)
SCHED = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_schedule="scaled_linear",
             beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False, clip_sample=False)


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("prior")
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(d / "tok", vocab_size=CLIP["vocab_size"]))
  pipe = loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(UNET), unet_params=unet_lib.init_unet_params(UNET, jax.random.key(0)),
      text_encoder=clip_text.CLIPTextModel(CLIP), text_params=clip_text.init_clip_params(CLIP, jax.random.key(1)),
      tokenizer=tok, scheduler_config=SCHED)
  loading.save_pipeline(pipe, d / "model")
  return str(d / "model")


def _args(work, data, prior):
  return ["run", "--config", "configs/synth.py:tiny", "--workdir", str(work), f"--config.data.cache_dir={data}",
          f"--config.diffusion.path={prior}", "--config.ddb.k=3", "--config.ddb.invert_steps=2",
          "--config.ddb.n_samples=1", "--config.ddb.num_steps=2", "--config.ddb.ig_steps=4",
          "--config.ddb.retrain.num_epochs=1", "--config.ddb.retrain.batch_size=16", "--config.ddb.mask=given"]


class Killed(Exception):
  pass


def test_run_end_to_end_and_resume(tmp_path, prior_dir, monkeypatch, capsys):
  data = tmp_path / "data"
  rc = cli.main(_args(tmp_path / "a", data, prior_dir))
  assert rc == 0
  stages = "erm, select, segment, invert, inpaint, prune, retrain"
  assert "stages: redid " in capsys.readouterr().out
  rep = json.load(open(tmp_path / "a" / "report.json"))
  for section in ("erm", "ddb"):
    for key in ("worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy", "groups"):
      assert key in rep[section]["test"]
  assert sum(rep["generated_per_class"]) == 2 * 3  # K images per class x (K-1) targets x 1 sample
  assert os.path.isfile(tmp_path / "a" / "prune" / "prune_log.csv")
  assert os.path.isfile(tmp_path / "a" / "plots" / "group_accuracy.png")
  assert "DDB" in open(tmp_path / "a" / "report.md").read()
  # The real stages reused as a whole, then a pruning setting redoes pruning and retraining only.
  assert cli.main(_args(tmp_path / "a", data, prior_dir)) == 0
  assert f"stages: reused {stages}\n" in capsys.readouterr().out
  mtime = os.path.getmtime(tmp_path / "a" / "inpaint" / "edits.csv")
  assert cli.main(_args(tmp_path / "a", data, prior_dir) + ["--config.ddb.prune_threshold=1e9"]) == 0
  assert "redid prune (changed ddb.prune_threshold), retrain (upstream prune)" in capsys.readouterr().out
  assert json.load(open(tmp_path / "a" / "report.json"))["kept_per_class"] == [0, 0]
  assert os.path.getmtime(tmp_path / "a" / "inpaint" / "edits.csv") == mtime

  # Killed during the pruning stage, then rerun: the same report.
  from spurjax.ddb import prune_stage
  real = prune_stage.score_edits

  def boom(*a, **k):
    raise Killed()

  monkeypatch.setattr(prune_stage, "score_edits", boom)
  with pytest.raises(Killed):
    cli.main(_args(tmp_path / "b", data, prior_dir))
  assert not (tmp_path / "b" / "report.json").exists()
  monkeypatch.setattr(prune_stage, "score_edits", real)
  assert cli.main(_args(tmp_path / "b", data, prior_dir)) == 0
  rep_b = json.load(open(tmp_path / "b" / "report.json"))
  rep.pop("diffusion_path"), rep_b.pop("diffusion_path")
  assert rep_b == rep
