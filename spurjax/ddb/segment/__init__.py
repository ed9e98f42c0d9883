"""Stage segment: a mask of the causal object of every selected image.

- `masks`: method names, Otsu thresholds, cleaning and IoU;
- `attention`: language-guided cross-attention maps of the frozen diffusion UNet;
- `diffedit`: DiffEdit contrast masks; `gradcam`: Grad-CAM of the ERM classifier;
- `methods`: the masks of one method (`ddb.segment.method`) for the selected images;
- `stage`: the stage (masks, IoU against the dataset's masks, fingerprinted folder).
"""
from spurjax.ddb.segment.attention import attention_maps, noun_token_weights
from spurjax.ddb.segment.gradcam import feature_module_path, gradcam_maps
from spurjax.ddb.segment.masks import (DIFFUSION_METHODS, METHODS, clean_mask, clean_masks, mask_iou, mean_iou,
                                       method_name, normalise_maps, otsu_masks, otsu_threshold)
from spurjax.ddb.segment.methods import (base_mask, diffedit_masks, given_masks, method_masks, refine_settings,
                                         true_masks)
from spurjax.ddb.segment.stage import STAGE, Masks, check_config, compute, load

__all__ = ["attention_maps", "noun_token_weights", "feature_module_path", "gradcam_maps", "DIFFUSION_METHODS",
           "METHODS", "clean_mask", "clean_masks", "mask_iou", "mean_iou", "method_name", "normalise_maps",
           "otsu_masks", "otsu_threshold", "base_mask", "diffedit_masks", "given_masks", "method_masks",
           "refine_settings", "true_masks", "STAGE", "Masks", "check_config", "compute", "load"]
