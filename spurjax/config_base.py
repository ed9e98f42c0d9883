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

  c.method = ml_collections.ConfigDict()
  c.method.name = "erm"
  c.method.loss = "ce"

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.path = ""           # a diffusers-format directory
  return c
