"""`spurjax run` checks every stage's settings before the first stage computes: bad input ends with a
one-line error naming the key or file, exit status 2, and nothing written."""
import json
import os

import pytest

from spurjax import cli
from spurjax.config_util import config_from
from spurjax.errors import SpurjaxError
from test_folder import make_folder


def _model(root, in_channels=4, out_channels=4):
  os.makedirs(os.path.join(root, "unet"), exist_ok=True)
  with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionPipeline"}, f)
  with open(os.path.join(root, "unet", "config.json"), "w") as f:
    json.dump({"in_channels": in_channels, "out_channels": out_channels}, f)
  return str(root)


@pytest.fixture
def folder(tmp_path):
  data = tmp_path / "data"
  make_folder(str(data))
  return data


def _listing(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("case", ["negative_k", "not_a_model", "workdir_is_file", "workdir_below_file",
                                  "mode_against_unet", "old_flat_key"])
def test_bad_input_fails_before_any_stage_with_nothing_written(tmp_path, folder, capsys, case):
  work = tmp_path / "work"
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(work), "--config.data.kind=folder",
          f"--config.data.root={folder}"]
  needle = {"negative_k": "ddb.select.k=-5", "not_a_model": "not a diffusers model directory",
            "workdir_is_file": "is a file", "workdir_below_file": "is a file",
            "mode_against_unet": "ddb.inpaint.mode='blended'", "old_flat_key": "moved to 'ddb.select.k'"}[case]
  if case == "negative_k":
    args.append("--config.ddb.select.k=-5")
  elif case == "not_a_model":
    (tmp_path / "empty_model").mkdir()
    args.append(f"--config.diffusion.path={tmp_path / 'empty_model'}")
  elif case in ("workdir_is_file", "workdir_below_file"):
    work.write_text("not a directory")
    if case == "workdir_below_file":
      args[args.index("--workdir") + 1] = str(work / "below")
  elif case == "mode_against_unet":   # an SD-2-inpainting-shaped UNet (9 channels) with the blended mode
    args += [f"--config.diffusion.path={_model(tmp_path / 'sd2_inpaint', 9, 4)}", "--config.ddb.inpaint.mode=blended"]
  elif case == "old_flat_key":
    args.append("--config.ddb.k=5")
  before = _listing(tmp_path)
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and needle in err, err
  assert _listing(tmp_path) == before   # nothing written: no workdir, no stage folder, no .tmp


def test_inpaint_mode_follows_the_unet_it_is_checked_against(tmp_path, folder):
  from spurjax.data import load_table
  from spurjax.ddb import run as ddb_run
  from spurjax import sharding
  from spurjax.context import Context
  cfg = config_from("configs/synth.py:tiny", ["--config.data.kind=folder", f"--config.data.root={folder}",
                                              f"--config.diffusion.path={_model(tmp_path / 'plain', 4, 4)}"])
  ctx = lambda c: Context(cfg=c, workdir=str(tmp_path / "w"), table=load_table(c.data), mesh=sharding.make_mesh())  # noqa: E731
  cfg.ddb.inpaint.mode = "channels"
  with pytest.raises(SpurjaxError, match="needs an inpainting UNet"):
    ddb_run.validate(ctx(cfg))
  cfg.ddb.inpaint.mode = "blended"
  ddb_run.validate(ctx(cfg))
  cfg.ddb.inpaint.mode = "auto"
  ddb_run.validate(ctx(cfg))


def test_a_config_file_with_an_old_flat_key_names_its_new_place(tmp_path):
  path = tmp_path / "old.py"
  path.write_text("from spurjax.config_base import base_config\n\n"
                  "def get_config():\n  c = base_config()\n  c.ddb.inpaint_mode = 'channels'\n  return c\n")
  with pytest.raises(SpurjaxError, match="'ddb.inpaint_mode' moved to 'ddb.inpaint.mode'"):
    config_from(str(path))


@pytest.mark.parametrize("preset", ["configs/waterbirds.py", "configs/celeba.py", "configs/metashift.py"])
def test_a_paper_preset_without_imagenet_weights_or_a_model_is_refused_before_any_stage(tmp_path, folder, capsys, preset):
  work = tmp_path / "work"
  args = ["run", "--config", preset, "--workdir", str(work), "--config.data.kind=folder", f"--config.data.root={folder}"]
  before = _listing(tmp_path)
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "model.pretrained" in err and "none" in err, err
  assert cli.main(args + ["--config.model.pretrained=none"]) == 2   # on purpose: then the diffusion model is asked for
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "diffusion.path" in err, err
  assert cli.main(args + ["--config.model.pretrained=/no/such/weights.pth"]) == 2
  assert "file not found: /no/such/weights.pth" in capsys.readouterr().err
  assert _listing(tmp_path) == before


def test_the_paper_preset_takes_the_two_stable_diffusion_models_and_checks_them(tmp_path, folder, capsys):
  """The paper's setup: masks and tokens on SD-2-base, edits with SD-2-inpainting (9 channels: the mode
  follows the model); SD-2-base as the inpainter in channels mode is refused before any stage."""
  base = _model(tmp_path / "sd2_base", 4, 4)
  inpainter = _model(tmp_path / "sd2_inpainting", 9, 4)
  for d in (base, inpainter):   # the two text encoders must match for the tokens to move
    os.makedirs(os.path.join(d, "text_encoder"), exist_ok=True)
    with open(os.path.join(d, "text_encoder", "config.json"), "w") as f:
      json.dump({"hidden_size": 16}, f)
  from spurjax.context import Context
  from spurjax.data import load_table
  from spurjax.ddb import run as ddb_run
  from spurjax import sharding
  over = ["--config.data.kind=folder", f"--config.data.root={folder}", "--config.model.pretrained=none",
          f"--config.diffusion.path={base}", f"--config.diffusion.inpaint_path={inpainter}"]
  cfg = config_from("configs/waterbirds.py", over)
  ctx = Context(cfg=cfg, workdir=str(tmp_path / "w"), table=load_table(cfg.data), mesh=sharding.make_mesh())
  try:
    ddb_run.validate(ctx)
  except SpurjaxError as e:   # only the tokenizers, which these JSON-only directories lack, may be missing
    assert "tokenizer" in str(e), e
  cfg.ddb.inpaint.mode = "channels"
  cfg.diffusion.inpaint_path = base
  ctx = Context(cfg=cfg, workdir=str(tmp_path / "w"), table=load_table(cfg.data), mesh=sharding.make_mesh())
  with pytest.raises(SpurjaxError, match="needs an inpainting UNet"):
    ddb_run.validate(ctx)
