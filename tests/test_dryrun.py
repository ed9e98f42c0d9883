"""`spurjax dryrun`: the SD-2-shaped random models, the projection's counts, and one end-to-end run at
toy-structured models (SD-2's structure is compiled in test_sd2_shape)."""
import json
import os

import pytest

from spurjax import cli
from spurjax.config_util import config_from
from spurjax.dryrun import counts as cnt, measure, models

PRESET = "configs/waterbirds.py"


def test_full_size_parameter_counts():
  """Shape arithmetic only (jax.eval_shape): SD-2's UNet, 23-layer text encoder and VAE at full width."""
  c = models.sd2_configs()
  n = {k: models.count_params(models.param_shapes(k, c[k])) for k in ("unet", "text_encoder", "vae")}
  assert abs(n["unet"] - 865.9e6) < 0.1e6, n
  assert abs(n["text_encoder"] - 340.4e6) < 0.1e6, n
  assert abs(n["vae"] - 83.65e6) < 0.1e6, n
  inpaint = models.unet_config(inpaint=True)
  assert models.count_params(models.param_shapes("unet", inpaint)) - n["unet"] == 5 * 320 * 9   # conv_in's 5 extra inputs


@pytest.mark.slow   # ~20 s: writes and reads two SD-2-structured directories
def test_written_dirs_load_with_sd2_structure(tmp_path):
  from spurjax.diffusion import loading
  logs = []
  paths = models.write_models(tmp_path / "m", width=64, resolution=64, model_name="resnet18", log=logs.append)
  for key, in_channels in (("base", 4), ("inpaint", 9)):
    pipe = loading.load_pipeline(paths[key], components=None if key == "base" else ("unet",))
    u = dict(pipe.unet.config)
    assert u["block_out_channels"] == [5, 10, 20, 20] and u["attention_head_dim"] == [5, 10, 20, 20]
    assert u["layers_per_block"] == 2 and u["use_linear_projection"] is True and u["cross_attention_dim"] == 16
    assert u["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert u["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert u["in_channels"] == in_channels and u["out_channels"] == 4 and u["sample_size"] == 8
    assert pipe.is_inpaint == (in_channels == 9)
    if key == "inpaint":
      continue
    t = dict(pipe.text_encoder.config)
    assert (t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["num_attention_heads"]) == (16, 64, 23, 16)
    assert t["hidden_act"] == "gelu" and t["max_position_embeddings"] == 77 and len(pipe.tokenizer) == 49408
    v = dict(pipe.vae.config)
    assert v["block_out_channels"] == [2, 4, 8, 8] and v["latent_channels"] == 4 and v["layers_per_block"] == 2
    assert pipe.latent_scale == pytest.approx(0.18215) and pipe.vae_scale_factor == 8
    assert pipe.scheduler_config["_class_name"] == "PNDMScheduler"
  from spurjax.models import torchvision_io
  sd = torchvision_io.load_state_dict(paths["resnet"])
  assert sd["fc.weight"].shape == (1000, 512)
  # A second call with the same settings reuses every file; another width is another directory.
  mtime = os.path.getmtime(os.path.join(paths["base"], "unet", "diffusion_pytorch_model.safetensors"))
  logs.clear()
  assert models.write_models(tmp_path / "m", width=64, resolution=64, model_name="resnet18", log=logs.append) == paths
  assert sum("reused" in line for line in logs) == 3
  assert os.path.getmtime(os.path.join(paths["base"], "unet", "diffusion_pytorch_model.safetensors")) == mtime
  assert not models.is_cached(paths["base"], models.sd2_configs(32, 64))


def _records(units=None):
  units = units or {s: 2.0 for s in cnt.STAGES}
  return [measure.StageRecord(stage=s, wall_s=10.0, compile_s=4.0, load_s=1.0, host_peak_gib=1.0,
                              device_peak_gib=None, units=units[s], unit=cnt.UNITS[s]) for s in cnt.STAGES]


def test_projection_uses_the_presets_counts():
  full = config_from(PRESET)
  run = config_from(PRESET, ["--config.ddb.prune.ig_steps=5"])
  units = cnt.full_units(full)
  assert units["erm"] == 4795 * 300 and units["select"] == 4795 and units["segment"] == 300 * 2
  assert units["invert"] == 3000 * 4 * 2 and units["inpaint"] == 50 * 300 * 2 and units["prune"] == 600
  assert units["retrain"] == 200 * cnt.retrain_rows(4795, 600, 0.5)
  rows = {r["stage"]: r for r in cnt.projection(_records(), run, full)}
  assert all(r["seconds_per_unit"] == pytest.approx(2.5) for s, r in rows.items() if s != "prune")
  assert rows["prune"]["seconds_per_unit"] == pytest.approx(2.5 * 50 / 5)   # per edit at the preset's 50 IG steps
  assert rows["invert"]["projected_hours"] == pytest.approx((5 + 2.5 * 24000) / 3600)
  # Changing a count of the projected run scales its stage's projection, and only that one.
  more = config_from(PRESET, ["--config.ddb.invert.steps=6000", "--config.ddb.inpaint.num_steps=25"])
  rows2 = {r["stage"]: r for r in cnt.projection(_records(), run, more)}
  assert rows2["invert"]["projected_hours"] == pytest.approx((5 + 2.5 * 48000) / 3600)
  assert rows2["inpaint"]["full_units"] == rows["inpaint"]["full_units"] / 2
  assert rows2["erm"]["projected_hours"] == rows["erm"]["projected_hours"]


def test_measure_merges_compile_spans():
  assert measure.merged_seconds([(0, 2), (1, 3), (5, 6)]) == 4
  assert measure.merged_seconds([]) == 0


@pytest.mark.parametrize("args, message", [
    (["--width", "3"], "--width 3"),
    (["--resolution", "500"], "--resolution 500"),
    (["--count", "ddb.invert.steps=x"], "--count"),
    (["--count", "ddb.nope=2"], "unknown config key"),
    (["--config.model.name=cnn"], "torchvision"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
  rc = cli.main(["dryrun", "--config", PRESET, "--workdir", str(tmp_path / "w")] + args)
  err = capsys.readouterr().err.strip()
  assert rc == 2 and message in err and "\n" not in err
  assert not os.path.exists(tmp_path / "w" / "models")


TINY = ["--config.model.name=resnet18", "--config.data.image_size=32", "--config.data.resize=36",
        "--config.train.batch_size=16", "--config.ddb.retrain.batch_size=16"]
# SD-2's component kinds with one attention level and one layer per block: this test checks the dry
# run's plumbing and measurements; SD-2's structure is checked above and in test_sd2_shape.
TOY = {"SD2_UNET": dict(models.SD2_UNET, block_out_channels=[64, 128], attention_head_dim=[2, 2],
                        layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
       "SD2_VAE": dict(models.SD2_VAE, layers_per_block=1),
       "SD2_TEXT": dict(models.SD2_TEXT, num_hidden_layers=1, num_attention_heads=2)}


@pytest.mark.slow
def test_dryrun_end_to_end(tmp_path, monkeypatch, capsys):
  """Every stage of the preset runs and is measured, on toy-structured models at width / 8 and 64 px."""
  from spurjax.dryrun import run
  for name, value in TOY.items():
    monkeypatch.setattr(models, name, value)
  run.dryrun(PRESET, str(tmp_path / "w"), TINY, width=8, resolution=64, image_size=(80, 60),
             counts={"ddb.prune.ig_steps": 4, "ddb.invert.steps": 1})
  out = json.load(open(tmp_path / "w" / "dryrun.json"))
  assert [r["stage"] for r in out["stages"]] == list(cnt.STAGES)
  for r in out["stages"]:
    assert r["units"] > 0 and r["wall_s"] > 0 and r["host_peak_gib"] > 0 and r["projected_hours"] > 0, r
  units = {r["stage"]: r["units"] for r in out["stages"]}
  assert units["segment"] == 8 and units["prune"] == 8 and units["inpaint"] == 3 * 8 and units["invert"] == 1 * 4 * 2
  assert out["full_counts"]["ddb.select.k"] == 300 and out["full_counts"]["train.num_epochs"] == 300
  assert "/jax/core/compile/backend_compile_duration" in out["compile_events"]
  assert "projected" in open(tmp_path / "w" / "dryrun.md").read()
  assert "| retrain |" in capsys.readouterr().out
