"""Stage prune: Integrated Gradients inside each edit's mask (`attribute`), the two criteria and the
pruning log (`criteria`), as a stage (`stage`)."""
from spurjax.ddb.prune.criteria import (LOG_COLUMNS, LOG_FILE, META_COLUMNS, META_FILE, SCORES, build_records,
                                        keep_top, prune_decisions, prune_settings, read_prune_log,
                                        source_reference_prob, write_prune_outputs)
from spurjax.ddb.prune.stage import STAGE, Kept, check_config, classifier_view_mask, edit_mask, kept_table, score_edits

__all__ = ["LOG_COLUMNS", "LOG_FILE", "META_COLUMNS", "META_FILE", "SCORES", "build_records", "keep_top",
           "prune_decisions", "prune_settings", "read_prune_log", "source_reference_prob", "write_prune_outputs",
           "STAGE", "Kept", "check_config", "classifier_view_mask", "edit_mask", "kept_table", "score_edits"]
