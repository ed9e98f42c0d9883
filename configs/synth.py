"""The built-in benchmark (`spurjax data synth`): a Waterbirds-like 64-px task.

`--config configs/synth.py:tiny` is a seconds-long CPU smoke variant.
"""
from spurjax.config_base import base_config


def get_config(arg=None):
  c = base_config()
  c.data.kind = "synth"
  c.data.synth_size = 64
  c.data.image_size = 32         # the classifier sees 32 px (the generator and diffusion prior 64 px)
  c.data.resize = 32
  c.data.crop_scale = (0.8, 1.0)
  c.data.cache = True
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.model.name = "cnn3"           # 32-64-128 CNN, started from the shipped pretrained backbone
  c.model.init_from = "builtin"   # spurjax/assets/backbone/cnn3.npz (the ImageNet stand-in)
  # Backbone pretraining (`spurjax pretrain --data DIR --out FILE`) on the broad corpus that
  # `spurjax data broad` writes (10 object families x 6 scenes, none of this benchmark's classes)
  # uses the base config's `pretrain` section.
  # ERM fine-tuning of the pretrained backbone, chosen on validation worst-group / average
  # accuracy (seed 0): SGD at lr 0.02 or 1e-3 learns only the background (val WGA 0.0);
  # Adam at 1e-3 for 8 epochs gives a Waterbirds-like ERM (val WGA 0.44, train-weighted 0.98).
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  c.train.batch_size = 64
  c.train.eval_batch_size = 256
  c.train.num_epochs = 8
  # DDB on a 2-core CPU in minutes, with the prior spurjax ships (32-px pixel space). Every value
  # below was chosen on mean validation WGA over seeds 0-2; the measurements behind each choice,
  # and the settings tried and not kept, are in docs/experiments.md.
  c.diffusion.path = "builtin"
  # 400 lowest-loss images per class, one edit each (800 edits). Validation 96.0 (97.3 / 94.0 / 96.7)
  # against 95.3 for the earlier 30-per-class settings; 300 per class 96.0 / 90.7 (seeds 0-1).
  c.ddb.select.k = 400
  c.ddb.nouns = ("bird", "flower")
  # Class words, not learned tokens: tokens pulled the inpaintings toward the source scene
  # (validation 69.3 against 94.0 with the class word, seed 0). `ddb.invert.steps=300` turns them on.
  c.ddb.invert.steps = 0
  c.ddb.invert.lr = 5e-3
  c.ddb.invert.batch = 4
  c.ddb.invert.accum = 1
  # Masks: DiffEdit contrast (bird vs flower prompt), refined by colour (raw mean IoU 0.74-0.76
  # against 0.44 unrefined), then the mask's box grown by 4 px is repainted (validation 96.0 against
  # 95.1 for the square around it). attention, given (true masks) and gradcam are selectable.
  c.ddb.segment.method = "diffedit"
  c.ddb.segment.diffedit_refine = True
  c.ddb.segment.diffedit_refine_band = (1.0, 4.0)
  c.ddb.segment.box = "box"
  c.ddb.segment.box_grow = 4
  c.ddb.inpaint.mode = "auto"     # channels for an inpainting UNet such as the shipped prior, else blended
  c.ddb.inpaint.n_samples = 1
  # DPM-Solver++ (2M) at 16 steps keeps the main command inside 8 minutes on the 2-core CPU
  # (inpainting ~100 s against ~145 s for 25 DDIM steps). Validation, seeds 0-2: 95.3 (96.7 / 93.3 /
  # 96.0); 25 DDIM steps 96.0 took the command to 7:40-8:09, 12 DPM-Solver++ steps gave 94.9.
  c.ddb.inpaint.sampler = "dpmpp_2m"
  c.ddb.inpaint.num_steps = 16
  c.ddb.inpaint.guidance_scale = 3.0      # 5 draws the class more often, but validation fell to 88.0 (seed 0)
  # Guidance at every step. Only at timesteps 150-900 (`ddb.inpaint.guidance_interval=(150,900)`): harder edits,
  # validation 94.9 against 94.0 over seeds 0-4 (under the one-point rule), test 93.3 against 94.1
  # (measured before erased backgrounds were on).
  c.ddb.prune.ig_steps = 32
  # Retraining from the ERM weights at ERM's rate, each edit weighing as much as a training image;
  # the network is then mixed with the ERM weights (WiSE-FT), alpha and epoch chosen together on
  # validation WGA (selected alphas 0.85-1).
  c.ddb.retrain.gammas = (1.0, 1.0)
  c.ddb.retrain.name = "adam"
  c.ddb.retrain.lr = 1e-3
  c.ddb.retrain.weight_decay = 0.0
  c.ddb.retrain.schedule = "cosine"
  # 5 epochs with the erased backgrounds below (each epoch twice as long): validation 96.4 against 96.9
  # for 8 (a tie), and the main command stays inside 8 minutes.
  c.ddb.retrain.num_epochs = 5
  c.ddb.retrain.batch_size = 64
  c.ddb.retrain.interpolate = (0.8, 0.85, 0.9, 0.95, 1.0)
  # Erased backgrounds (`spurjax.ddb.erase`): each of the 800 selected images with its object erased,
  # once under each label, repeated as often as the edits; at weight 0.5 they carry as much loss as the
  # edits, and they aim at the "repainted box in a land scene = flower" cue. Validation, seeds 0-2: 96.4
  # (96.7 / 96.0 / 96.7) against 95.3 without; weight 1: 96.2 (docs/experiments.md).
  c.ddb.retrain.background_weight = 0.5
  c.ddb.retrain.background_grow = 2
  if arg == "tiny":
    c.data.synth_size = 32
    c.data.image_size = 16
    c.data.resize = 16
    c.data.synth_scale = 0.05
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.train.num_epochs = 2
    c.ddb.retrain.num_epochs = 5
    c.ddb.select.k = 30
    c.ddb.inpaint.n_samples = 2
  return c
