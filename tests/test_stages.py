"""The stage contract: fingerprints, reuse and redo of `spurjax run`'s stages, config overrides."""
import dataclasses
import json
import os
import types

import pytest

from spurjax import cli, stages
from spurjax.config_base import base_config
from spurjax.config_util import config_from, parse_command
from spurjax.ddb import inpaint, invert, retrain, segment, select
from spurjax.ddb.prune import stage as prune_stage
from spurjax.ddb import report as ddb_report
from spurjax.ddb import run as ddb_run
from spurjax.errors import SpurjaxError
from spurjax.train import erm

ORDER = ("erm", "select", "segment", "invert", "inpaint", "prune", "retrain")
MODULES = (erm, select, segment, invert, inpaint, prune_stage, retrain)


@pytest.fixture
def dry_pipeline(monkeypatch, tmp_path):
  """`spurjax run` with every stage's real name, keys, upstream and identity but a compute that only
  records that it ran (and what it was given): the reuse decisions are the real ones."""
  calls = []
  for mod in MODULES:
    real = mod.STAGE

    def compute(ctx, inputs, folder, name=real.name):
      calls.append((name, sorted(inputs)))
      with open(os.path.join(folder, "out.txt"), "w") as f:
        f.write(name)

    def load(ctx, folder, name=real.name):
      assert open(os.path.join(folder, "out.txt")).read() == name
      return types.SimpleNamespace(report={}, folder=folder)

    monkeypatch.setattr(mod, "STAGE", dataclasses.replace(real, compute=compute, load=load))
  monkeypatch.setattr(ddb_run, "STAGES", tuple(mod.STAGE for mod in MODULES))
  monkeypatch.setattr(ddb_report, "build", lambda *a, **k: {})
  for name in ("write_markdown", "plots", "print_summary"):
    monkeypatch.setattr(ddb_report, name, lambda *a, **k: None)
  for d in ("sd_a", "sd_b"):  # two "diffusion models" that differ in their weights
    os.makedirs(tmp_path / d)
    (tmp_path / d / "model_index.json").write_text("{}")
    (tmp_path / d / "weights.safetensors").write_bytes(d.encode() * 100)
    (tmp_path / d / "unet").mkdir()                            # an inpainting UNet's config (7 = 2 x 3 + 1)
    (tmp_path / d / "unet" / "config.json").write_text('{"in_channels": 7, "out_channels": 3}')
  return calls


def _run(tmp_path, capsys, *overrides):
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "w"),
          f"--config.data.cache_dir={tmp_path / 'data'}", f"--config.diffusion.path={tmp_path / 'sd_a'}",
          "--config.ddb.segment.method=given", "--config.ddb.invert.steps=2", *overrides]
  capsys.readouterr()
  assert cli.main(args) == 0
  line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stages:")]
  assert len(line) == 1
  return line[0]


def _redone(line):
  redid = line.split("redid ")[1] if "redid " in line else ""
  return [part.split(" (")[0] for part in redid.split(", ") if part]


AFTER_INVERT = ["invert", "inpaint", "prune", "retrain"]  # segment does not use the learned tokens
AFTER_SEGMENT = ["segment", "inpaint", "prune", "retrain"]  # nor, by default, invert the masks


@pytest.mark.parametrize("override, want", [
    ("train.num_epochs=3", list(ORDER)),
    ("ddb.select.k=4", list(ORDER[1:])),
    ("ddb.invert.steps=5", AFTER_INVERT),
    ("ddb.segment.method=gradcam", AFTER_SEGMENT),
    ("ddb.invert.mask=segment", AFTER_INVERT),
    ("ddb.inpaint.n_samples=3", ["inpaint", "prune", "retrain"]),
    ("ddb.prune.threshold=0.5", ["prune", "retrain"]),
    ("ddb.retrain.num_epochs=3", ["retrain"]),
    ("ddb.retrain.background_weight=2", ["retrain"]),
    # The masks use the diffusion model too: the attention masks are scored in segment/iou.json.
    ("diffusion.path={sd_b}", ["segment", "invert", "inpaint", "prune", "retrain"]),
])
def test_a_change_redoes_its_stage_and_everything_downstream(tmp_path, capsys, dry_pipeline, override, want):
  line = _run(tmp_path, capsys)
  assert _redone(line) == list(ORDER) and "reused" not in line
  assert dry_pipeline[0] == ("erm", []) and dry_pipeline[-1] == ("retrain", ["erm", "prune", "segment"])
  # Nothing changed: everything reused, nothing computed.
  del dry_pipeline[:]
  line = _run(tmp_path, capsys)
  assert line == "stages: reused " + ", ".join(ORDER) and dry_pipeline == []
  # One change: exactly that stage and those downstream of it are redone, the others reused.
  override = override.format(sd_b=tmp_path / "sd_b")
  line = _run(tmp_path, capsys, f"--config.{override}")
  assert _redone(line) == want, line
  assert [c[0] for c in dry_pipeline] == want
  if override.startswith("ddb.invert.mask"):        # tokens learned on the masks take them as an input
    assert ("invert", ["segment", "select"]) in dry_pipeline
  assert "reused " + ", ".join(n for n in ORDER if n not in want) in line or want == list(ORDER)
  first = want[0]
  key = override.split("=")[0]
  assert f"{first} (changed {key}" in line, line
  # And the changed run is now the one reused.
  del dry_pipeline[:]
  assert _redone(_run(tmp_path, capsys, f"--config.{override}")) == [] and dry_pipeline == []


def test_a_run_can_share_another_runs_stage_folders(tmp_path, capsys, dry_pipeline):
  """bench methods' ddb_nolabels: only retraining differs, so it reads the ddb run's other stages."""
  from spurjax.ddb import run as ddb_run
  _run(tmp_path, capsys)                                                   # the first run, in w/
  del dry_pipeline[:]
  overrides = [f"--config.data.cache_dir={tmp_path / 'data'}", f"--config.diffusion.path={tmp_path / 'sd_a'}",
               "--config.ddb.segment.method=given", "--config.ddb.invert.steps=2", "--config.ddb.retrain.select=val_worst_class"]
  cfg = config_from("configs/synth.py:tiny", overrides)
  shared = {s: str(tmp_path / "w" / s) for s in ORDER if s != "retrain"}
  capsys.readouterr()
  ddb_run.run(cfg, str(tmp_path / "w2"), stage_dirs=shared)
  assert [c[0] for c in dry_pipeline] == ["retrain"]
  assert "stages: reused " + ", ".join(ORDER[:-1]) + "; redid retrain" in capsys.readouterr().out
  made = set(os.listdir(tmp_path / "w2"))
  assert "retrain" in made and not made & set(shared)                     # no shared stage was written here


def test_bad_invert_mask_settings_fail_before_any_stage(tmp_path, capsys, dry_pipeline):
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "w"),
          f"--config.data.cache_dir={tmp_path / 'data'}", "--config.ddb.segment.method=given", "--config.ddb.invert.steps=2"]
  assert cli.main(args + [f"--config.diffusion.path={tmp_path / 'sd_a'}", "--config.ddb.invert.mask=box"]) == 2
  assert "config ddb.invert.mask = 'box'; valid: full, segment" in capsys.readouterr().err
  (tmp_path / "sd_a" / "unet" / "config.json").write_text('{"in_channels": 4, "out_channels": 4}')
  assert cli.main(args + [f"--config.diffusion.path={tmp_path / 'sd_a'}", "--config.ddb.invert.mask=segment"]) == 2
  assert "needs an inpainting UNet" in capsys.readouterr().err
  assert dry_pipeline == [] and not (tmp_path / "w").exists()


def test_bad_prompt_settings_fail_before_any_stage(tmp_path, capsys, dry_pipeline):
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "w"),
          f"--config.data.cache_dir={tmp_path / 'data'}", f"--config.diffusion.path={tmp_path / 'sd_a'}"]
  assert cli.main(args + ["--config.ddb.inpaint.template=a photo of {a_attribute} {noun}"]) == 2  # no attributes given
  err = capsys.readouterr().err
  assert "ddb.inpaint.attributes" in err and err.strip().count("\n") == 0
  assert cli.main(args + ["--config.ddb.inpaint.template=a {colour} {noun}"]) == 2
  assert "config ddb.inpaint.template" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.inpaint.eta=1.5"]) == 2
  assert "config ddb.inpaint.eta=1.5 must be a number in [0, 1]" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.inpaint.strength=0.01"]) == 2   # int(num_steps x 0.01) = 0 steps
  assert "config ddb.inpaint.strength: strength=0.01 with" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.inpaint.strength=1.5"]) == 2
  assert "must be in (0, 1]" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.inpaint.guidance_interval=(900,150)"]) == 2
  assert "config ddb.inpaint.guidance_interval: guidance_interval=(900, 150) must satisfy" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.retrain.interpolate=(0.5,2.0)"]) == 2
  assert "config ddb.retrain.interpolate = (0.5, 2.0): every alpha must be" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.retrain.select=last"]) == 2
  assert "config ddb.retrain.interpolate: needs a validation criterion" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.segment.diffedit_refine=True", "--config.ddb.segment.diffedit_refine_band=(3.0,1.0)"]) == 2
  assert "config ddb.segment.diffedit_refine_band: 0 <= low < high needed" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.prune.top=0"]) == 2
  assert "config ddb.prune.top = 0.0; it must be in (0, 1]" in capsys.readouterr().err
  assert cli.main(args + ["--config.ddb.inpaint.generator=dream"]) == 2
  assert "config ddb.inpaint.generator='dream' must be one of diffusion, paste, redraw" in capsys.readouterr().err
  assert dry_pipeline == [] and not (tmp_path / "w").exists()


def test_killed_stage_resumes_in_its_tmp_folder_and_other_settings_start_afresh(tmp_path):
  log = []

  def compute(ctx, inputs, folder):
    log.append(sorted(os.listdir(folder)))
    open(os.path.join(folder, "part1"), "w").close()
    if ctx.cfg.ddb.select.k == 1:
      raise KeyboardInterrupt  # killed half-way
    open(os.path.join(folder, "part2"), "w").close()

  stage = stages.Stage("s", groups=("ddb.select",), upstream=(), compute=compute, load=lambda ctx, d: sorted(os.listdir(d)))
  cfg = base_config()
  ctx = types.SimpleNamespace(cfg=cfg, stage_dir=lambda n: str(tmp_path / n))
  cfg.ddb.select.k = 1
  with pytest.raises(KeyboardInterrupt):
    stages.Runner(ctx).run(stage)
  assert not (tmp_path / "s").exists() and (tmp_path / "s.tmp" / "part1").exists()
  cfg.ddb.select.k = 2  # other settings: the partial folder is discarded
  assert stages.Runner(ctx).run(stage) == ["part1", "part2", "stage.json"]
  assert log[-1] == ["stage.json"]
  cfg.ddb.select.k = 1  # killed again, then resumed with the same settings: the partial files are still there
  with pytest.raises(KeyboardInterrupt):
    stages.Runner(ctx).run(stage)
  assert (tmp_path / "s" / "part2").exists()  # the finished folder of k=2 is untouched until replaced
  assert json.load(open(tmp_path / "s" / "stage.json"))["record"]["config"] == {"ddb.select": {"k": 2}}


def test_a_folder_spurjax_did_not_write_is_never_removed(tmp_path):
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "precious.txt").write_text("keep me")
  stage = stages.Stage("s", groups=(), shared=("seed",), upstream=(), compute=lambda ctx, i, d: None, load=lambda ctx, d: d)
  ctx = types.SimpleNamespace(cfg=base_config(), stage_dir=lambda n: str(tmp_path / n))
  with pytest.raises(SpurjaxError, match="not a spurjax stage folder"):
    stages.Runner(ctx).run(stage)
  assert (tmp_path / "s" / "precious.txt").read_text() == "keep me"


def _flat(cfg, prefix=""):
  for k, v in cfg.items():
    if hasattr(v, "items"):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _other_value(v):
  if isinstance(v, bool):
    return str(not v), (not v)
  if isinstance(v, int):
    return str(v + 1), v + 1
  if isinstance(v, float):
    return repr(v * 2 + 1), v * 2 + 1
  if isinstance(v, tuple):
    return "('x', 'y')", ("x", "y")
  return "other", "other"


def test_every_ddb_key_can_be_overridden_from_the_command_line():
  keys = [(k, v) for k, v in _flat(base_config()) if k.startswith("ddb.")]
  assert len(keys) > 30
  overrides, want = [], {}
  for k, v in keys:
    raw, value = _other_value(v)
    overrides.append(f"--config.{k}={raw}")
    want[k] = value
  args, rest = parse_command(["--config", "configs/synth.py", "--workdir", "w", *overrides], "spurjax run")
  cfg = config_from(args.config, rest)
  got = dict(_flat(cfg))
  for k, v in want.items():
    assert got[k] == v, k
  with pytest.raises(SpurjaxError, match="unknown config key 'ddb.nope'"):
    config_from("configs/synth.py", ["--config.ddb.nope=1"])
  with pytest.raises(SpurjaxError, match="--frob"):
    parse_command(["--config", "configs/synth.py", "--workdir", "w", "--frob"], "spurjax run")


def test_every_key_a_stage_hashes_is_in_the_base_config():
  cfg = config_from("configs/synth.py")
  for stage in ddb_run.STAGES:
    stages.config_values(cfg, stage.config_keys(cfg))  # raises on a missing key
  with pytest.raises(SpurjaxError, match="missing"):
    stages.config_values(cfg, ["ddb.not_a_key"])


def _downstream(name: str, cfg) -> set:
  out = {name}
  for stage in ddb_run.STAGES:   # in pipeline order: upstream stages come first
    if set(stage.upstream_of(cfg)) & out:
      out.add(stage.name)
  return out


@pytest.mark.parametrize("stage", ddb_run.STAGES, ids=lambda s: s.name)
def test_a_key_added_to_a_stage_group_redoes_that_stage_and_those_downstream(tmp_path, stage):
  """A new key in a stage's group enters its fingerprint with no change to the stage's code: changing
  it redoes exactly that stage and every stage downstream of it, and nothing else."""
  cfg = config_from("configs/synth.py")
  group = cfg
  for part in stage.groups[-1].split("."):
    group = group[part]
  group.brand_new_key = 0
  pipeline = [dataclasses.replace(s, identity=None, compute=lambda ctx, i, d: None, load=lambda ctx, d: d)
              for s in ddb_run.STAGES]
  ctx = types.SimpleNamespace(cfg=cfg, stage_dir=lambda n: str(tmp_path / n))

  def run_all():
    runner = stages.Runner(ctx, verbose=False)
    for s in pipeline:
      runner.run(s)
    return {n for n, _ in runner.redone}

  assert run_all() == {s.name for s in ddb_run.STAGES}
  assert run_all() == set()
  group.brand_new_key = 1
  redone = run_all()
  assert redone == _downstream(stage.name, cfg) and stage.name in redone
  assert redone != {s.name for s in ddb_run.STAGES} or stage.name == "erm"


def test_wall_time_is_printed_and_recorded_for_computed_stages_only(tmp_path, capsys, dry_pipeline, monkeypatch):
  import time
  dry = inpaint.STAGE

  def compute(ctx, inputs, folder):  # one stage takes a known time
    time.sleep(0.3)
    dry.compute(ctx, inputs, folder)

  monkeypatch.setattr(inpaint, "STAGE", dataclasses.replace(dry, compute=compute))
  monkeypatch.setattr(ddb_run, "STAGES", tuple(mod.STAGE for mod in MODULES))
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "w"),
          f"--config.data.cache_dir={tmp_path / 'data'}", f"--config.diffusion.path={tmp_path / 'sd_a'}",
          "--config.ddb.segment.method=given", "--config.ddb.invert.steps=2"]
  capsys.readouterr()
  assert cli.main(args) == 0
  timing = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stage wall time:")]
  assert len(timing) == 1 and all(f" {name} " in timing[0] for name in ORDER), timing
  for name in ORDER:
    record = json.load(open(tmp_path / "w" / name / stages.STAGE_FILE))
    assert record["complete"] and record["seconds"] >= (0.3 if name == "inpaint" else 0)
  # A rerun that redoes only retraining times only retraining.
  assert cli.main(args + ["--config.ddb.retrain.num_epochs=3"]) == 0
  timing = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stage wall time:")]
  assert len(timing) == 1 and timing[0].startswith("stage wall time: retrain ") and "erm" not in timing[0]


def test_model_directory_digest_ignores_documentation_but_not_weights_or_configs(tmp_path):
  model = tmp_path / "model"
  (model / "unet").mkdir(parents=True)
  (model / "model_index.json").write_text('{"_class_name": "StableDiffusionInpaintPipeline"}')
  (model / "unet" / "config.json").write_text('{"in_channels": 7}')
  (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
  base = stages.directory_digest(str(model))
  (model / "README.md").write_text("how it was trained")
  (model / "training.json").write_text('{"steps": 3000}')
  (model / "loss.jsonl").write_text('{"step": 1, "loss": 0.1}\n')
  (model / "unet" / "samples.png").write_bytes(b"png")
  assert stages.directory_digest(str(model)) == base
  (model / "unet" / "config.json").write_text('{"in_channels": 9}')
  changed_config = stages.directory_digest(str(model))
  assert changed_config != base
  (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 64)
  assert stages.directory_digest(str(model)) != changed_config
  (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
  assert stages.directory_digest(str(model)) not in (base, changed_config)
