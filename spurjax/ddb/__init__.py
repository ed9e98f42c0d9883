"""The DDB pipeline: one module per stage (select, invert, segment, inpaint, prune with its
attribution, retrain) and the orchestrator `spurjax.ddb.run`."""
