"""Waterbirds (waterbird_complete95_forest2water2). ERM as in the GroupDRO / JTT / DFR papers:
ImageNet-pretrained ResNet-50, SGD momentum 0.9, lr 1e-3, weight decay 1e-4, batch 128, 300 epochs.
Point `--config.model.pretrained` at a torchvision ResNet-50 state dict for the ImageNet initialisation.
"""
from spurjax.config_base import base_config, paper_ddb


def get_config(arg=None):
  c = paper_ddb(base_config(), "bird")   # the paper's DDB recipe (a photo of a <c_i> bird)
  c.data.kind = "folder"
  c.data.root = "data/waterbird_complete95_forest2water2"
  c.data.image_size = 224
  c.data.resize = 256             # eval: resize to 256, centre-crop 224 (the ImageNet protocol)
  c.model.name = "resnet50"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 128
  c.train.num_epochs = 300
  # `:tiny`: ResNet-18 at 32 px for one epoch, a CPU smoke run.
  if arg == "tiny":
    c.model.pretrained = "none"
    c.model.name = "resnet18"
    c.data.image_size = 32
    c.data.resize = 36
    c.train.batch_size = 16
    c.train.num_epochs = 1
  return c
