"""The `spurjax` command line. Thin: every command calls an importable function.

  spurjax erm --config configs/synth.py --workdir W [--config.key=value ...]
  spurjax dryrun --config configs/waterbirds.py [--workdir W] [--width N]
  spurjax data synth --out DIR [...]
  spurjax bench {erm,unet} [...]

Bad input prints one line `spurjax: error: ...` and exits with status 2.
"""
from __future__ import annotations

import importlib
import sys

from spurjax.errors import SpurjaxError

USAGE = """usage: spurjax <command> [options]

commands:
  run     --config FILE[:arg] --workdir DIR [--config.key=value ...]   the DDB pipeline end to end
  erm     --config FILE[:arg] --workdir DIR [--config.key=value ...]   train ERM, write report.json/.md
  dryrun  --config FILE [--workdir DIR] [--models DIR] [--width N] [...]  the preset at full size, random weights: time, memory
  baseline --method NAME --config FILE --workdir DIR [...]           a baseline (suby rwy subg rwg groupdro jtt dfr)
  invert  --config FILE --workdir DIR [...]                            learn one textual-inversion token per class
  prior   train --data DIR --out PRIOR_DIR [...]                      train a small text-to-image prior
  pretrain --data DIR --out FILE.npz [--config FILE] [...]            pretrain the classifier backbone
  data    synth --out DIR [--image-size N] [--scale F] [--seed N]       write the built-in benchmark
  data    broad --out DIR [--train-per-combo N]                          write the backbone pretraining corpus
  data    photos --out DIR [--image-size N] [--debs DIR] [...]             write the real-photograph benchmark
  data    photo-broad --out DIR [--train-per-family N] [...]           write the real-photograph pretraining corpus
  bench   erm | unet | ig | conv | prior | methods | artefact [options] speed figures, the methods table, checks
"""

BENCHES = {"erm": "spurjax.bench.erm", "unet": "spurjax.bench.unet", "methods": "spurjax.bench.methods",
           "prior": "spurjax.bench.prior", "ig": "spurjax.bench.ig", "conv": "spurjax.bench.conv",
           "artefact": "spurjax.bench.artefact"}
DATA = {"synth": "spurjax.data.synth", "broad": "spurjax.data.broad", "photos": "spurjax.data.photos",
        "photo-broad": "spurjax.data.photo_broad"}


def _dispatch(argv):
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  cmd, rest = argv[0], argv[1:]
  from spurjax.distributed import maybe_initialize
  maybe_initialize()
  if cmd == "erm":
    from spurjax.config_util import config_from, parse_command
    from spurjax.train import erm
    args, overrides = parse_command(rest, "spurjax erm")
    erm.run(config_from(args.config, overrides), args.workdir)
    return 0
  if cmd == "run":
    from spurjax.ddb import run as ddb_run
    return ddb_run.main(rest) or 0
  if cmd == "dryrun":
    from spurjax.dryrun import run as dryrun
    return dryrun.main(rest) or 0
  if cmd == "invert":
    from spurjax.diffusion import invert
    return invert.main(rest) or 0
  if cmd == "prior":
    from spurjax.diffusion import prior
    return prior.main(rest) or 0
  if cmd == "pretrain":
    from spurjax.train import pretrain
    return pretrain.main(rest) or 0
  if cmd == "baseline":
    from spurjax.baselines import cli as baseline_cli
    return baseline_cli.main(rest) or 0
  if cmd in ("data", "bench"):
    table = DATA if cmd == "data" else BENCHES
    if not rest or rest[0] not in table:
      raise SpurjaxError(f"spurjax {cmd}: expected one of {', '.join(table)}")
    mod = importlib.import_module(table[rest[0]])
    return mod.main(rest[1:]) or 0
  raise SpurjaxError(f"unknown command '{cmd}' (run 'spurjax --help')")


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return _dispatch(argv)
  except SpurjaxError as e:
    print(f"spurjax: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
