"""Stage invert: one textual-inversion token per class learned on the frozen diffusion model (its pure
core is `spurjax.diffusion.invert`), as a stage (`stage`)."""
from spurjax.ddb.invert.stage import INFO_FILE, INVERT_MASKS, STAGE, Tokens, check_config, compute, device_batch, load

__all__ = ["INFO_FILE", "INVERT_MASKS", "STAGE", "Tokens", "check_config", "compute", "device_batch", "load"]
