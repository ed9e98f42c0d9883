"""The `spurjax` command line. Thin: every command calls an importable function.

  spurjax erm --config configs/synth.py --workdir W [--config.key=value ...]
  spurjax data synth --out DIR [...]
  spurjax bench {erm,unet} [...]

Bad input prints one line `spurjax: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from spurjax.errors import SpurjaxError

USAGE = """usage: spurjax <command> [options]

commands:
  run     --config FILE[:arg] --workdir DIR [--config.key=value ...]   the DDB pipeline end to end
  erm     --config FILE[:arg] --workdir DIR [--config.key=value ...]   train ERM, write report.json/.md
  baseline --method NAME --config FILE --workdir DIR [...]           a baseline (suby rwy subg rwg groupdro jtt dfr)
  invert  --config FILE --workdir DIR [...]                            learn one textual-inversion token per class
  prior   train --data DIR --out PRIOR_DIR [...]                      train a small text-to-image prior
  pretrain --data DIR --out FILE.npz [--config FILE] [...]            pretrain the classifier backbone
  data    synth --out DIR [--image-size N] [--scale F] [--seed N]       write the built-in benchmark
  data    broad --out DIR [--train-per-combo N]                          write the backbone pretraining corpus
  bench   erm | unet | methods | prior | ddb | ig [options]                                          print speed figures
"""

BENCHES = {"erm": "spurjax.bench.erm", "unet": "spurjax.bench.unet", "methods": "spurjax.bench.methods",
           "prior": "spurjax.bench.prior", "ddb": "spurjax.bench.ddb", "ig": "spurjax.bench.ig"}
DATA = {"synth": "spurjax.data.synth", "broad": "spurjax.data.broad"}


def _config_command(argv, prog):
  p = argparse.ArgumentParser(prog=prog)
  p.add_argument("--config", required=True, help="config file, optionally with :arg (e.g. configs/synth.py:tiny)")
  p.add_argument("--workdir", required=True)
  args, rest = p.parse_known_args(argv)
  from spurjax.config_util import apply_overrides, load_config
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    raise SpurjaxError(f"unknown argument(s): {' '.join(bad)}")
  cfg = apply_overrides(load_config(args.config), rest)
  return cfg, args.workdir


def _dispatch(argv):
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  cmd, rest = argv[0], argv[1:]
  from spurjax.distributed import maybe_initialize
  maybe_initialize()
  if cmd == "erm":
    cfg, workdir = _config_command(rest, "spurjax erm")
    from spurjax.train import erm
    erm.run(cfg, workdir)
    return 0
  if cmd == "run":
    from spurjax.ddb import run as ddb_run
    return ddb_run.main(rest) or 0
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
