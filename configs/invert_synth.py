"""Textual inversion on the built-in benchmark with the shipped prior (`spurjax invert`).

Per class, `invert.num_images` training images of the class's majority place; one token
`<c{class}>` per class, initialised from the class noun. The paper's SD-2 settings are
3000 steps of batch 1 x grad-accum 4 at lr 5e-4 scaled by the batch (2e-3 effective);
the CPU default here keeps the effective rate and batch but runs fewer steps.
`:tiny` is a seconds-long smoke variant.
"""
import ml_collections

from spurjax.config_base import base_config


def get_config(arg=None):
  c = base_config()
  c.data.kind = "synth"
  c.data.synth_size = 64
  c.data.verify = "header"
  c.diffusion.path = "builtin"

  c.invert = ml_collections.ConfigDict()
  c.invert.num_images = 30        # K images per class (30 was best on Waterbirds)
  c.invert.group = "majority"     # majority | all
  c.invert.nouns = ()             # default: the dataset's class names
  c.invert.initializer = ""       # default: the class noun
  c.invert.placeholder_fmt = "<c{}>"
  c.invert.templates = ()         # default: spurjax.diffusion.invert.DEFAULT_TEMPLATES
  c.invert.steps = 400            # optimizer steps (paper: 3000)
  c.invert.batch_size = 4
  c.invert.grad_accum = 1
  c.invert.lr = 5e-4              # scaled by batch_size * grad_accum
  c.invert.log_every = 20
  c.invert.ckpt_every = 100
  c.invert.mode = "joint"         # joint: one run for every class | per_class: one run each (reference)
  c.invert.flip = 0.0             # horizontal-flip probability (reference script: 0.5)
  if arg == "paper":
    c.invert.steps = 3000
    c.invert.batch_size = 1
    c.invert.grad_accum = 4
    c.invert.mode = "per_class"     # the reference script runs once per class
    from spurjax.diffusion.invert import REFERENCE_TEMPLATES
    c.invert.templates = REFERENCE_TEMPLATES  # its 27 object templates, with the class noun
    c.invert.flip = 0.5
  elif arg == "tiny":
    c.data.synth_size = 32
    c.data.synth_scale = 0.05
    c.invert.num_images = 4
    c.invert.steps = 4
    c.invert.log_every = 2
    c.invert.ckpt_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use 'paper', 'tiny' or nothing)")
  return c
