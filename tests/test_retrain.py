"""The retraining set: train rows weight 1, kept edits repeated and weighted by gamma of their label."""
import numpy as np

from helpers import toy_table
from spurjax.data.table import GENERATED, Table, concat
from spurjax.ddb.retrain import retrain_set


def _gen(n_per_class=(2, 3), k=2):
  y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int32)
  img = np.zeros((4, 4, 3), np.uint8)
  return Table(name="gen", refs=list(range(len(y))), y=y, place=np.zeros(len(y), np.int32),
               split=np.zeros(len(y), np.int32), num_classes=k, num_places=2, read_image=lambda i: img)


def test_weights_and_repeats():
  table = toy_table()
  both = concat(table, _gen(), second_split=GENERATED)
  assert both.group_counts("train").sum() == table.group_counts("train").sum()  # edits stay out of metrics
  ts = retrain_set(both, len(table), gammas=(6.0, 10.0), gen_fraction=0.5)
  n_train = len(table.indices("train"))
  gen_pos = ts.indices >= len(table)
  assert (~gen_pos).sum() == n_train and np.all(ts.weights[~gen_pos] == 1.0)
  reps = gen_pos.sum() // 5
  assert reps == round(n_train / 5) and gen_pos.sum() == 5 * reps
  np.testing.assert_array_equal(ts.weights[gen_pos], np.where(ts.labels[gen_pos] == 0, 6.0, 10.0))


def test_no_kept_edits_is_plain_train_and_k_classes_pad_gamma():
  table = toy_table()
  ts = retrain_set(concat(table, _gen((0, 0))), len(table), (6.0,), 0.5)
  assert len(ts) == len(table.indices("train"))
  gen3 = _gen((1, 1, 2), k=3)
  both = concat(table, gen3, second_split=GENERATED)
  ts = retrain_set(both, len(table), (2.0,), 0.5)
  assert set(np.unique(ts.weights[ts.indices >= len(table)])) == {2.0}
