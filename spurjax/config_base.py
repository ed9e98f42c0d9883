"""The shared defaults every config file in configs/ starts from."""
from __future__ import annotations

import ml_collections

from spurjax.train.step import IMAGENET_MEAN, IMAGENET_STD


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
  c.model.pretrained = ""         # torchvision state dict (.pth / .safetensors)
  c.model.init_from = ""          # spurjax weights (.npz from `spurjax pretrain`) or "builtin"; fc re-initialised
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9
  c.optim.nesterov = False
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

  # DDB: every key any stage reads, with its one default, grouped by stage (`spurjax run`).
  c.ddb = ml_collections.ConfigDict()
  c.ddb.nouns = ()                # class nouns for prompts ("bird", ...); default: the dataset's class names
  # select: per class the k training images with the lowest per-sample ERM loss
  c.ddb.k = 30
  # invert: one textual-inversion token per class (paper: 3000 steps, batch 1 x accumulation 4, lr 5e-4 scaled)
  c.ddb.invert_steps = 3000       # 0: no token, prompts use the class noun alone
  c.ddb.invert_lr = 5e-4
  c.ddb.invert_batch = 1
  c.ddb.invert_accum = 4
  # full: the whole image is masked (the paper's textual inversion); segment: an inpainting UNet
  # repaints the segment stage's masks (the regions DDB inpaints) from their context, so the token
  # learns the object, not the scene; inside the mask the loss is weighted by invert_mask_weight.
  c.ddb.invert_mask = "full"
  c.ddb.invert_mask_weight = 1.0
  # segment: object masks
  c.ddb.mask = "attention"        # attention (language-guided) | diffedit | gradcam (alias saliency) | given
  c.ddb.segment_template = "a photo of a {noun}"
  c.ddb.segment_timesteps = (100, 300, 500)   # attention: noise levels on a 1000-step scale
  c.ddb.segment_batch_size = 8    # images per compiled call (rounded up to the devices)
  c.ddb.segment_radius = 1        # opening / closing radius in pixels (0: none)
  c.ddb.segment_keep_ratio = 0.25  # keep components >= this fraction of the largest
  c.ddb.segment_dilate = 0        # final dilation in pixels
  c.ddb.segment_compare = ("attention", "diffedit", "gradcam")  # also scored in segment/iou.json (true masks)
  c.ddb.diffedit_strength = 0.5   # diffedit: noise level (fraction of the training timesteps)
  c.ddb.diffedit_draws = 10       # diffedit: noise draws averaged
  c.ddb.diffedit_threshold = 1.5  # diffedit: keep pixels above this x the map's mean
  c.ddb.diffedit_refine = False   # diffedit: colour refinement between the band's sure background / object
  c.ddb.diffedit_refine_band = (1.0, 4.0)  # (low, high) x the map's mean (spurjax.ddb.diffedit)
  c.ddb.mask_box = "none"         # predicted masks: none | box (their bounding box) | square (the square around it)
  c.ddb.mask_box_grow = 0         # pixels added on every side of that box
  # inpaint: the other classes' tokens painted into each selected image's mask
  # diffusion | paste (another selected image's object cut by its mask and pasted) | redraw (the built-in
  # benchmark only: the same scene drawn again by its renderer with the other class's object; a perfect edit)
  c.ddb.generator = "diffusion"
  c.ddb.template = "a photo of a {token} {noun}"
  # words of which each edit's prompt names one (template with {attribute} or {a_attribute}), e.g. colours
  c.ddb.attributes = ()
  c.ddb.inpaint_mode = "blended"  # blended (4-channel UNet) | channels (9-channel inpainting UNet) | auto
  c.ddb.n_samples = 2             # edits per (image, target class)
  c.ddb.num_steps = 50
  c.ddb.guidance_scale = 7.5
  c.ddb.inpaint_sampler = "ddim"  # ddim | dpmpp_2m
  c.ddb.inpaint_eta = 0.0         # sampler stochasticity: 0 deterministic DDIM, 1 DDPM-like
  # < 1: start from the source image noised part way (the last int(num_steps x strength) steps run;
  # diffusers' inpainting `strength`); 1: from pure noise inside the mask
  c.ddb.inpaint_strength = 1.0
  # (t_min, t_max): classifier-free guidance only at sampler timesteps in that range, the conditional
  # prediction alone outside it (guidance in a limited interval); (): at every step
  c.ddb.guidance_interval = ()
  c.ddb.inpaint_batch_size = 8    # rows per compiled call (rounded up to the devices)
  c.ddb.inpaint_paste = True      # paste generated pixels into the original through the mask
  # prune: Integrated Gradients (original -> edit) inside the mask, and the two criteria
  c.ddb.ig_steps = 50
  c.ddb.ig_method = "gausslegendre"  # gausslegendre | riemann_trapezoid | riemann_left | riemann_right | riemann_middle
  c.ddb.ig_output = "logit"       # logit | prob: the classifier output attributed
  c.ddb.ig_chunk = 10             # path points per backward pass
  c.ddb.ig_batch_size = 8         # edits per compiled call
  c.ddb.ig_dtype = "float32"
  c.ddb.prune_threshold = 0.3     # keep an edit when its attribution score exceeds this (reference code: 0.3)
  c.ddb.prune_score = "rho"       # rho (IG sum inside the mask) | rho_norm (that over the IG total)
  c.ddb.prune_top = 1.0           # < 1: of the edits passing both criteria, keep this share per target class, highest score first
  # retrain: L_train + sum_j gamma_j L_gen,j from the ERM weights
  c.ddb.gammas = (6.0, 10.0)      # loss weight of kept edits per target class (reference code: 6, 10)
  c.ddb.gen_fraction = 0.5        # share of each retraining epoch made of (repeated) kept edits
  c.ddb.background_weight = 0.0   # >0: selected images with their object erased, once per label at this weight (0: off)
  c.ddb.background_grow = 2       # px the segment mask grows before erasing
  c.ddb.retrain = ml_collections.ConfigDict()
  c.ddb.retrain.name = "adam"     # paper: Adam, lr 5e-6, 200 epochs, batch 32, selection by val WGA
  c.ddb.retrain.lr = 5e-6
  c.ddb.retrain.weight_decay = 0.0
  c.ddb.retrain.schedule = "constant"
  c.ddb.retrain.num_epochs = 200
  c.ddb.retrain.batch_size = 32
  c.ddb.retrain.select = "val_wga"  # or val_worst_class: needs no validation group labels
  c.ddb.retrain.ema_decay = 0.0   # > 0: evaluate, select and keep an EMA of the weights (train.ema_decay)
  # Weight-space ensembling with the ERM weights (WiSE-FT, Wortsman et al. 2022): each epoch, every
  # alpha here is tried as (1 - alpha) * ERM + alpha * retrained, scored by `select` on validation; the
  # best (epoch, alpha) is kept. Empty: off (the paper's retraining).
  c.ddb.retrain.interpolate = ()
  return c
