"""`spurjax baseline --method NAME --config FILE[:arg] --workdir W [--erm-workdir E] [--config.key=value ...]`.

The method's published settings for the config's dataset (`spurjax.baselines.hparams`) are
applied first, the `--config.*` overrides last.
"""
from __future__ import annotations

import argparse

from spurjax.errors import SpurjaxError


def parse(argv, prog: str = "spurjax baseline"):
  p = argparse.ArgumentParser(prog=prog)
  p.add_argument("--method", required=True, help="erm, suby, rwy, subg, rwg, groupdro, jtt or dfr")
  p.add_argument("--config", required=True, help="config file, optionally with :arg (e.g. configs/synth.py:tiny)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--erm-workdir", default=None, help="DFR: the ERM run to take features from (default WORKDIR/erm)")
  args, rest = p.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    raise SpurjaxError(f"unknown argument(s): {' '.join(bad)}")
  return args, rest


def main(argv) -> int:
  args, overrides = parse(argv)
  from spurjax.baselines import hparams, runner
  from spurjax.config_util import load_config
  runner.check_method(args.method)
  base = load_config(args.config)
  cfg = hparams.method_config(base, args.method, overrides)
  erm_cfg = hparams.method_config(base, "erm", overrides) if args.method == "dfr" else None
  runner.run_method(cfg, args.method, args.workdir, erm_workdir=args.erm_workdir, erm_cfg=erm_cfg)
  return 0
