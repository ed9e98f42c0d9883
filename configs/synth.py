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
  c.model.name = "cnn16"
  c.optim.name = "sgd"
  c.optim.lr = 0.02
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.train.batch_size = 64
  c.train.eval_batch_size = 256
  c.train.num_epochs = 10
  # DDB on a 2-core CPU in minutes, with the prior spurjax ships (32-px pixel space).
  c.diffusion.path = "builtin"
  c.ddb.k = 30
  c.ddb.nouns = ("bird", "flower")
  c.ddb.invert_steps = 300
  c.ddb.invert_lr = 5e-3
  c.ddb.invert_batch = 4
  c.ddb.invert_accum = 1
  c.ddb.mask = "attention"        # language-guided; given (true masks) and saliency are selectable
  c.ddb.inpaint_mode = "channels"  # the shipped prior is an inpainting UNet ([noisy, mask, masked] input)
  c.ddb.n_samples = 2
  c.ddb.num_steps = 25
  c.ddb.guidance_scale = 3.0
  c.ddb.ig_steps = 32
  c.ddb.retrain.name = "sgd"
  c.ddb.retrain.lr = 0.005
  c.ddb.retrain.schedule = "cosine"
  c.ddb.retrain.num_epochs = 5
  c.ddb.retrain.batch_size = 64
  if arg == "tiny":
    c.data.synth_size = 32
    c.data.image_size = 16
    c.data.resize = 16
    c.data.synth_scale = 0.05
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.train.num_epochs = 2
  return c
