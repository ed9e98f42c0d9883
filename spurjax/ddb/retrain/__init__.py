"""Stage retrain: fine-tuning from the ERM weights on the training set plus the kept edits (and the
erased backgrounds of `erase`), as a stage (`stage`)."""
from spurjax.ddb.retrain.stage import (STAGE, backgrounds, check_config, retrain, retrain_config, retrain_set,
                                       save_background_grid)

__all__ = ["STAGE", "backgrounds", "check_config", "retrain", "retrain_config", "retrain_set", "save_background_grid"]
