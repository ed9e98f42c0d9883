"""The DDB pipeline: one module per stage (select, invert, segment, inpaint, attribute, prune,
retrain) and the orchestrator `spurjax.ddb.run`."""


def run_ddb(cfg, workdir: str, erm_workdir: str | None = None, **kw) -> dict:
  """Runs (or resumes) the whole pipeline; see `spurjax.ddb.run.run`."""
  from spurjax.ddb.run import run
  return run(cfg, workdir, erm_workdir=erm_workdir, **kw)
