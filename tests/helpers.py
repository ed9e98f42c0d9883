"""Small in-memory datasets for tests."""
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
