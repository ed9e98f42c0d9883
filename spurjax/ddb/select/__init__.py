"""Stage select: per class the K lowest-loss ERM training images (`core`), as a stage (`stage`)."""
from spurjax.ddb.select.core import (Selection, check_k, per_sample_ce, select_majority, selected_indices,
                                     selection_from_logits, softmax)
from spurjax.ddb.select.stage import FILE, STAGE, compute, load, validate

__all__ = ["Selection", "check_k", "per_sample_ce", "select_majority", "selected_indices", "selection_from_logits",
           "softmax", "FILE", "STAGE", "compute", "load", "validate"]
