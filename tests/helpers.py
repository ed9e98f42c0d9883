"""Small in-memory datasets, configs and a tiny diffusion model for tests."""
import numpy as np

from spurjax.config_base import base_config
from spurjax.data.table import Table


def toy_table(n_per_group=(24, 4, 4, 24), val=6, test=6, size=16, seed=0) -> Table:
  """2 classes x 2 places; class = a bright square, place = background tint."""
  rng = np.random.default_rng(seed)
  ys, places, splits = [], [], []
  for split, counts in ((0, n_per_group), (1, (val,) * 4), (2, (test,) * 4)):
    for g, c in enumerate(counts):
      ys += [g // 2] * c
      places += [g % 2] * c
      splits += [split] * c
  n = len(ys)
  imgs = np.zeros((n, size, size, 3), np.uint8)
  for i in range(n):
    imgs[i] = rng.integers(0, 60, (size, size, 3))
    imgs[i, ..., 2 * places[i]] += 120
    s = size // 4
    if ys[i]:
      imgs[i, s:3 * s, s:3 * s, 1] = 250
  return Table(name="toy", refs=list(range(n)), y=np.array(ys, np.int32), place=np.array(places, np.int32),
               split=np.array(splits, np.int32), num_classes=2, num_places=2, read_image=lambda i: imgs[i])


def toy_config(**train):
  c = base_config()
  c.data.kind = "folder"
  c.data.image_size = 16
  c.data.resize = 16
  c.data.cache = True
  c.data.num_threads = 1
  c.model.name = "cnn"
  c.optim.lr = 0.05
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.num_epochs = 2
  for k, v in train.items():
    c.train[k] = v
  return c


def run_stage(ctx, stage, **upstream):
  """Runs one stage through the stage contract with the given upstream artefacts; returns its artefact."""
  from spurjax.stages import Runner
  runner = Runner(ctx, verbose=False)
  for name, art in upstream.items():
    runner.provide(name, art, f"given-{name}")
  return runner.run(stage), runner


def erm_artefact(model, variables):
  """An ERM stage artefact around a classifier made in a test."""
  from spurjax.train.erm import ErmResult
  return ErmResult(report={}, model=model, variables=variables, folder="")


TINY_CLIP = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
TINY_UNET = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                 attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
                 up_block_types=("CrossAttnUpBlock2D",), in_channels=3, out_channels=3, sample_size=16)
TINY_SCHEDULER = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_schedule="scaled_linear",
                      beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def write_tiny_pipeline(folder) -> str:
  """A one-level pixel-space text-to-image model (random weights) saved as a diffusers directory."""
  import jax

  from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, unet as unet_lib
  from pathlib import Path
  d = Path(folder)
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(d / "tok", vocab_size=TINY_CLIP["vocab_size"]))
  pipe = loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(TINY_UNET), unet_params=unet_lib.init_unet_params(TINY_UNET, jax.random.key(0)),
      text_encoder=clip_text.CLIPTextModel(TINY_CLIP), text_params=clip_text.init_clip_params(TINY_CLIP, jax.random.key(1)),
      tokenizer=tok, scheduler_config=TINY_SCHEDULER)
  loading.save_pipeline(pipe, d / "model")
  return str(d / "model")
