"""Stage inpaint: replace the causal object of each majority image by another class's.

- `prompts`: the plan (edits, prompts, tokens, the mode a UNet can run);
- `generate`: the diffusion generator's driver (chunks of edits sharded over the mesh);
- `paste`: the object-swap generator's pure core;
- `generators`: the diffusion, paste and redraw generators writing their edits;
- `stage`: the stage (edits.csv, fingerprinted folder).
"""
from spurjax.ddb.inpaint.generate import iter_counterfactuals, make_counterfactuals
from spurjax.ddb.inpaint.generators import edit_file, generator_settings, inpaint_pipeline
from spurjax.ddb.inpaint.prompts import (CSV_COLUMNS, GENERATORS, MODEL_FREE, MODES, Edit, attribute_of,
                                         check_tokens, class_prompts, plan_edits, resolve_mode)
from spurjax.ddb.inpaint.stage import STAGE, Edits, check_config, compute, load, read_edits

__all__ = ["iter_counterfactuals", "make_counterfactuals", "edit_file", "generator_settings", "inpaint_pipeline",
           "CSV_COLUMNS", "GENERATORS", "MODEL_FREE", "MODES", "Edit", "attribute_of", "check_tokens",
           "class_prompts", "plan_edits", "resolve_mode", "STAGE", "Edits", "check_config", "compute", "load",
           "read_edits"]
