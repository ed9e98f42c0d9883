"""`spurjax baseline --method NAME --config FILE[:arg] --workdir W [--erm-workdir E] [--config.key=value ...]`.

The method's published settings for the config's dataset (`spurjax.baselines.hparams`) are
applied first, the `--config.*` overrides last.
"""
from __future__ import annotations


def _arguments(p) -> None:
  p.add_argument("--method", required=True, help="erm, suby, rwy, subg, rwg, groupdro, jtt or dfr")
  p.add_argument("--erm-workdir", default=None, help="DFR: the ERM run to take features from (default WORKDIR/erm)")


def main(argv) -> int:
  from spurjax.baselines import hparams, runner
  from spurjax.config_util import load_config, parse_command
  args, overrides = parse_command(argv, "spurjax baseline", add_arguments=_arguments)
  runner.check_method(args.method)
  base = load_config(args.config)
  cfg = hparams.method_config(base, args.method, overrides)
  erm_cfg = hparams.method_config(base, "erm", overrides) if args.method == "dfr" else None
  runner.run_method(cfg, args.method, args.workdir, erm_workdir=args.erm_workdir, erm_cfg=erm_cfg)
  return 0
