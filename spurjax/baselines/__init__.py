"""Baselines in the one training harness: SUBY, RWY, SUBG, RWG, GroupDRO, JTT, DFR.

Importing this package registers the "group_dro" loss. `run_method` lives in
`spurjax.baselines.runner`.
"""
from spurjax.baselines import groupdro  # noqa: F401  (registers the "group_dro" loss)


def __getattr__(name):
  # Lazy: the runner pulls in the trainer, which must not load while the loss registry imports us.
  if name in ("GROUP_LABELS", "METHODS", "run_method"):
    from spurjax.baselines import runner
    return getattr(runner, name)
  raise AttributeError(name)
