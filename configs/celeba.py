"""CelebA, target Blond_Hair, spurious Male. ERM as in the GroupDRO / JTT papers:
ImageNet-pretrained ResNet-50, SGD momentum 0.9, lr 1e-4, weight decay 1e-4, batch 128, 50 epochs;
center-crop 178, resize 224.
"""
from spurjax.config_base import base_config, paper_ddb


def get_config(arg=None):
  c = paper_ddb(base_config(), "hair")   # the paper's DDB recipe (the hair colour is the class; the mask and edit are the hair)
  c.data.kind = "celeba"
  c.data.root = "data/celeba"
  c.data.center_crop = 178
  c.data.image_size = 224
  c.data.resize = 224
  c.data.verify = "header"        # check image headers only: full decoding of 200k images takes long
  c.model.name = "resnet50"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 128
  c.train.num_epochs = 50
  # `:tiny`: ResNet-18 at 32 px for one epoch, a CPU smoke run.
  if arg == "tiny":
    c.model.pretrained = "none"
    c.model.name = "resnet18"
    c.data.image_size = 32
    c.data.resize = 32
    c.train.batch_size = 16
    c.train.num_epochs = 1
  return c
