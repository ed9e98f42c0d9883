"""The shared defaults every config file in configs/ starts from."""
from __future__ import annotations

import ml_collections

from spurjax.train.step import IMAGENET_MEAN, IMAGENET_STD


# Keys of the old flat `ddb` layout -> their place in the stage groups (a one-line error names it).
MOVED_KEYS = {
  "ddb.k": "ddb.select.k", "ddb.mask": "ddb.segment.method", "ddb.segment_template": "ddb.segment.template",
  "ddb.segment_timesteps": "ddb.segment.timesteps", "ddb.segment_batch_size": "ddb.segment.batch_size",
  "ddb.segment_radius": "ddb.segment.radius", "ddb.segment_keep_ratio": "ddb.segment.keep_ratio",
  "ddb.segment_dilate": "ddb.segment.dilate", "ddb.segment_compare": "ddb.segment.compare",
  "ddb.diffedit_strength": "ddb.segment.diffedit_strength",
  "ddb.diffedit_draws": "ddb.segment.diffedit_draws",
  "ddb.diffedit_threshold": "ddb.segment.diffedit_threshold",
  "ddb.diffedit_refine": "ddb.segment.diffedit_refine",
  "ddb.diffedit_refine_band": "ddb.segment.diffedit_refine_band", "ddb.mask_box": "ddb.segment.box",
  "ddb.mask_box_grow": "ddb.segment.box_grow", "ddb.invert_steps": "ddb.invert.steps",
  "ddb.invert_lr": "ddb.invert.lr", "ddb.invert_batch": "ddb.invert.batch",
  "ddb.invert_accum": "ddb.invert.accum", "ddb.invert_mask": "ddb.invert.mask",
  "ddb.invert_mask_weight": "ddb.invert.mask_weight", "ddb.generator": "ddb.inpaint.generator",
  "ddb.template": "ddb.inpaint.template", "ddb.attributes": "ddb.inpaint.attributes",
  "ddb.inpaint_mode": "ddb.inpaint.mode", "ddb.n_samples": "ddb.inpaint.n_samples",
  "ddb.num_steps": "ddb.inpaint.num_steps", "ddb.guidance_scale": "ddb.inpaint.guidance_scale",
  "ddb.inpaint_sampler": "ddb.inpaint.sampler", "ddb.inpaint_eta": "ddb.inpaint.eta",
  "ddb.inpaint_strength": "ddb.inpaint.strength", "ddb.guidance_interval": "ddb.inpaint.guidance_interval",
  "ddb.inpaint_batch_size": "ddb.inpaint.batch_size", "ddb.inpaint_paste": "ddb.inpaint.paste",
  "ddb.ig_steps": "ddb.prune.ig_steps", "ddb.ig_method": "ddb.prune.ig_method",
  "ddb.ig_output": "ddb.prune.ig_output", "ddb.ig_chunk": "ddb.prune.ig_chunk",
  "ddb.ig_batch_size": "ddb.prune.ig_batch_size", "ddb.ig_dtype": "ddb.prune.ig_dtype",
  "ddb.prune_threshold": "ddb.prune.threshold", "ddb.prune_score": "ddb.prune.score",
  "ddb.prune_top": "ddb.prune.top", "ddb.gammas": "ddb.retrain.gammas",
  "ddb.gen_fraction": "ddb.retrain.gen_fraction", "ddb.background_weight": "ddb.retrain.background_weight",
  "ddb.background_grow": "ddb.retrain.background_grow",
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "folder"          # synth | folder | celeba | metashift | tfds
  c.data.root = ""                # --config.data.root=DIR points any config at a dataset folder
  c.data.cache_dir = "data"       # where the built-in benchmark is generated
  c.data.synth_size = 64
  c.data.synth_scale = 1.0
  c.data.synth_seed = 0
  c.data.image_size = 224
  c.data.resize = 256             # eval: resize to this square, center-crop image_size
  c.data.center_crop = 0          # optional center crop before resizing (CelebA: 178)
  c.data.crop_scale = (0.7, 1.0)  # train: random-resized-crop area range
  c.data.flip = 0.5
  c.data.augment = True
  c.data.cache = False            # decode every image once and keep it in memory
  c.data.verify = "full"          # full | header | none: image checks before anything is written
  c.data.num_threads = 2
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  c.data.num_classes = 0          # 0: inferred from the labels
  c.data.num_places = 0
  c.data.target = "Blond_Hair"    # CelebA
  c.data.spurious = "Male"
  c.data.tfds_name = ""
  c.data.image_key = "image"
  c.data.label_key = "label"
  c.data.attribute_key = "place"

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet50"
  c.model.pretrained = ""         # torchvision state dict (.pth / .safetensors); "none": none on purpose
  c.model.init_from = ""          # spurjax weights (.npz from `spurjax pretrain`) or "builtin"; fc re-initialised
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9                # adam / adamw
  c.optim.b2 = 0.999
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "constant"
  c.optim.warmup_epochs = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.eval_batch_size = 256
  c.train.num_epochs = 300
  c.train.select = "val_wga"      # val_wga | val_avg | val_worst_class | last

  # `spurjax pretrain`: the backbone's optimiser and schedule on the broad corpus (the ImageNet
  # stand-in of the built-in benchmark); model and input settings are the task's.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.name = "adam"
  c.pretrain.lr = 2e-3
  c.pretrain.momentum = 0.9
  c.pretrain.weight_decay = 5e-5
  c.pretrain.schedule = "cosine"
  c.pretrain.warmup_epochs = 1.0
  c.pretrain.batch_size = 128
  c.pretrain.num_epochs = 12
  c.pretrain.seed = 0

  c.method = ml_collections.ConfigDict()
  c.method.name = "erm"          # erm | suby | rwy | subg | rwg | groupdro | jtt | dfr
  c.method.loss = "ce"           # a name registered in spurjax.train.losses
  c.method.dro_eta = 0.01        # GroupDRO: step size of the exponentiated group weights
  c.method.dro_adj = 0.0         # GroupDRO: generalisation adjustment C (C / sqrt(n_g))
  c.method.dro_balanced = True   # GroupDRO: group-balanced batches (every group upsampled to the largest)
  c.method.jtt_epochs = 1        # JTT: epochs of the identification model
  c.method.jtt_lambda = 100.0    # JTT: upweighting of the error set
  c.method.dfr_reg = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)   # DFR: inverse L1 strengths tried
  c.method.dfr_subsamples = 10   # DFR: group-balanced subsamples averaged

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.path = "builtin"    # a diffusers-format directory; "builtin": the prior spurjax ships
  # A second model for the inpaint stage only (the paper: inversion and masks on SD-2-base, inpainting
  # with SD-2-inpainting); "" = diffusion.path. The learned token rows move into its text encoder.
  c.diffusion.inpaint_path = ""
  c.diffusion.dtype = "auto"      # auto (bfloat16 on a GPU/TPU, float32 on CPU) | float32 | bfloat16: UNet/VAE compute

  # DDB: one group per stage; a stage's fingerprint hashes its whole group (spurjax.stages).
  c.ddb = ml_collections.ConfigDict()
  c.ddb.nouns = ()                # class nouns for prompts ("bird", ...); default: the dataset's class names

  c.ddb.select = ml_collections.ConfigDict()   # per class the k lowest per-sample-loss ERM training images
  c.ddb.select.k = 30

  c.ddb.segment = ml_collections.ConfigDict()  # object masks of the selected images
  c.ddb.segment.method = "attention"   # attention (language-guided) | diffedit | gradcam (alias saliency) | given
  c.ddb.segment.template = "a photo of a {noun}"
  c.ddb.segment.timesteps = (100, 300, 500)   # attention: noise levels on a 1000-step scale
  c.ddb.segment.batch_size = 8         # images per compiled call (rounded up to the devices)
  c.ddb.segment.radius = 1             # opening / closing radius in pixels (0: none)
  c.ddb.segment.keep_ratio = 0.25      # keep components >= this fraction of the largest
  c.ddb.segment.dilate = 0             # final dilation in pixels
  c.ddb.segment.max_cover = 0.75       # a mask over more of its image found no object: that image is not edited
  c.ddb.segment.compare = ("attention", "diffedit", "gradcam")  # also scored in segment/iou.json (true masks)
  c.ddb.segment.diffedit_strength = 0.5   # diffedit: noise level (fraction of the training timesteps)
  c.ddb.segment.diffedit_draws = 10       # diffedit: noise draws averaged
  c.ddb.segment.diffedit_threshold = 1.5  # diffedit: keep pixels above this x the map's mean
  c.ddb.segment.diffedit_refine = False   # diffedit: colour refinement between sure background / object
  c.ddb.segment.diffedit_refine_band = (1.0, 4.0)  # (low, high) x the map's mean (spurjax.ddb.segment.diffedit)
  c.ddb.segment.box = "none"           # predicted masks: none | box (their bounding box) | square (the square around it)
  c.ddb.segment.box_grow = 0           # pixels added on every side of that box

  c.ddb.invert = ml_collections.ConfigDict()   # one textual-inversion token per class
  c.ddb.invert.steps = 3000            # paper: 3000 steps; 0: no token, prompts use the class noun alone
  c.ddb.invert.lr = 5e-4               # paper: 5e-4, scaled by the batch
  c.ddb.invert.batch = 1               # paper: batch 1 x accumulation 4
  c.ddb.invert.accum = 4
  c.ddb.invert.mask = "full"           # full: whole image (the paper) | segment: repaint the segment masks from context
  c.ddb.invert.mask_weight = 1.0       # segment: loss weight inside the mask
  c.ddb.invert.images = 0              # images per class it learns from: the lowest-loss selected ones (0: all)
  # The next three keep the built-in benchmark's results (joint, short, no flip); paper_ddb sets the reference's.
  c.ddb.invert.mode = "joint"          # joint: all tokens in one run | per_class: one run per class (as the reference)
  c.ddb.invert.templates = "short"     # short: 8 templates | reference: the reference script's 27 object templates
  c.ddb.invert.flip = 0.0              # probability of mirroring each example left-right (reference script: 0.5)

  c.ddb.inpaint = ml_collections.ConfigDict()  # the other classes' tokens painted into each selected image's mask
  c.ddb.inpaint.generator = "diffusion"   # diffusion | paste (another image's object) | redraw (built-in benchmark only)
  c.ddb.inpaint.template = "a photo of a {token} {noun}"
  c.ddb.inpaint.attributes = ()        # words of which each prompt names one ({attribute} / {a_attribute} in the template)
  c.ddb.inpaint.mode = "auto"          # auto: channels for a 9-channel inpainting UNet, else blended | blended | channels
  c.ddb.inpaint.n_samples = 2          # edits per (image, target class)
  c.ddb.inpaint.num_steps = 50
  c.ddb.inpaint.guidance_scale = 7.5
  c.ddb.inpaint.sampler = "ddim"       # ddim | dpmpp_2m
  c.ddb.inpaint.eta = 0.0              # sampler stochasticity: 0 deterministic DDIM, 1 DDPM-like
  c.ddb.inpaint.strength = 1.0         # < 1: start from the source noised part way (diffusers' `strength`)
  c.ddb.inpaint.guidance_interval = ()  # (t_min, t_max): guidance only at timesteps in that range; (): every step
  c.ddb.inpaint.batch_size = 8         # rows per compiled call (rounded up to the devices)
  c.ddb.inpaint.paste = True           # paste generated pixels into the original through the mask

  c.ddb.prune = ml_collections.ConfigDict()    # Integrated Gradients (original -> edit) inside the mask, two criteria
  c.ddb.prune.ig_steps = 50
  c.ddb.prune.ig_method = "gausslegendre"  # gausslegendre | riemann_trapezoid | riemann_left | riemann_right | riemann_middle
  c.ddb.prune.ig_output = "logit"      # logit | prob: the classifier output attributed
  c.ddb.prune.ig_chunk = 10            # path points per backward pass
  c.ddb.prune.ig_batch_size = 8        # edits per compiled call
  c.ddb.prune.ig_dtype = "float32"
  c.ddb.prune.threshold = 0.3          # keep an edit whose attribution score exceeds this (reference code: 0.3)
  c.ddb.prune.score = "rho"            # rho (IG sum inside the mask) | rho_norm (that over the IG total)
  c.ddb.prune.top = 1.0                # < 1: of the edits passing both criteria keep this share per target, best first

  c.ddb.retrain = ml_collections.ConfigDict()  # L_train + sum_j gamma_j L_gen,j from the ERM weights
  c.ddb.retrain.name = "adam"          # paper: Adam, lr 5e-6, 200 epochs, batch 32, selection by val WGA
  c.ddb.retrain.lr = 5e-6
  c.ddb.retrain.weight_decay = 0.0
  c.ddb.retrain.schedule = "constant"
  c.ddb.retrain.num_epochs = 200
  c.ddb.retrain.batch_size = 32
  c.ddb.retrain.select = "val_wga"     # or val_worst_class: needs no validation group labels
  c.ddb.retrain.ema_decay = 0.0        # > 0: evaluate, select and keep an EMA of the weights
  c.ddb.retrain.interpolate = ()       # WiSE-FT alphas tried each epoch as (1 - a) ERM + a retrained; (): off
  c.ddb.retrain.gammas = (6.0, 10.0)   # loss weight of kept edits per target class (reference code: 6, 10)
  c.ddb.retrain.gen_fraction = 0.5     # share of each retraining epoch made of (repeated) kept edits
  c.ddb.retrain.background_weight = 0.0  # > 0: selected images with their object erased, once per label (0: off)
  c.ddb.retrain.background_grow = 2    # px the segment mask grows before erasing
  return c


def paper_ddb(c: ml_collections.ConfigDict, noun: str) -> ml_collections.ConfigDict:
  """The paper's DDB recipe on a real dataset with Stable Diffusion 2 (base for masks and tokens,
  `diffusion.inpaint_path` SD-2-inpainting for the edits) and an ImageNet-pretrained ResNet-50;
  `noun` names the object of both classes ("a photo of a <c_i> bird")."""
  c.model.pretrained = "required"      # the literature's ERM starts from ImageNet weights (or "none", on purpose)
  c.diffusion.path = ""                # stabilityai/stable-diffusion-2-base, a diffusers directory (paper)
  c.ddb.nouns = (noun, noun)           # one noun, the class named by its token (reference prompts, e.g. "animal")
  c.ddb.select.k = 300                 # majority images per class (reference code's runs)
  c.ddb.segment.method = "attention"   # language-guided masks from the noun, in place of LangSAM (paper)
  c.ddb.segment.template = "a photo of a {noun}"
  c.ddb.segment.compare = ()           # no second mask method at this size
  c.ddb.invert.steps = 3000            # textual inversion: 3000 steps (paper, reference script)
  c.ddb.invert.lr = 5e-4               # scaled by batch x accumulation = 2e-3 (reference script's --scale_lr)
  c.ddb.invert.batch = 1               # batch 1 x accumulation 4 (reference script)
  c.ddb.invert.accum = 4
  c.ddb.invert.images = 30             # 30 images per class (paper's ablation: best of 20-40)
  c.ddb.invert.mode = "per_class"      # one independent run per class (reference script, run once per class)
  c.ddb.invert.templates = "reference" # its 27 object templates, one drawn per example (reference script)
  c.ddb.invert.flip = 0.5              # horizontal flips with probability 0.5 (reference script)
  c.ddb.inpaint.mode = "auto"          # channels with SD-2-inpainting's 9-channel UNet (reference pipeline)
  c.ddb.inpaint.template = "a photo of a {token} {noun}"   # reference prompt
  c.ddb.inpaint.n_samples = 1          # one edit per image (reference pipeline's default)
  c.ddb.inpaint.num_steps = 50         # diffusers' inpainting default
  c.ddb.inpaint.guidance_scale = 7.5   # diffusers' inpainting default
  c.ddb.inpaint.sampler = "ddim"
  c.ddb.prune.ig_steps = 50            # captum's default, as the reference calls it
  c.ddb.prune.ig_method = "gausslegendre"
  c.ddb.prune.threshold = 0.3          # reference code
  c.ddb.retrain.name = "adam"          # retraining: Adam, lr 5e-6, 200 epochs, batch 32 (reference code)
  c.ddb.retrain.lr = 5e-6
  c.ddb.retrain.num_epochs = 200
  c.ddb.retrain.batch_size = 32
  c.ddb.retrain.gammas = (6.0, 10.0)   # loss weights of the kept edits per class (reference code)
  c.ddb.retrain.select = "val_wga"     # epoch by validation worst-group accuracy (paper)
  return c
