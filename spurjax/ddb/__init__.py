"""The DDB pipeline: one module per stage (select, segment, invert, inpaint, prune with its
attribution, retrain) and the orchestrator `spurjax.ddb.run`."""
