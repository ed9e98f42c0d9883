import numpy as np
import pytest

from spurjax.metrics import group_counts, group_metrics


def test_hand_computed_case():
  # 2 classes x 2 places. Group sizes 4, 2, 1, 3; accuracies 3/4, 1/2, 0/1, 3/3.
  group = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
  y = group // 2
  pred = y.copy()
  pred[0] = 1 - pred[0]   # group 0: one wrong
  pred[4] = 1 - pred[4]   # group 1: one wrong
  pred[6] = 1 - pred[6]   # group 2: its only example wrong
  correct, total = group_counts(pred, y, group, 4)
  np.testing.assert_array_equal(correct, [3, 1, 0, 3])
  np.testing.assert_array_equal(total, [4, 2, 1, 3])
  train_total = [70, 10, 5, 15]
  m = group_metrics(correct, total, 2, train_total)
  assert m["worst_group_accuracy"] == 0.0
  assert m["worst_group"] == {"y": 1, "place": 0}
  assert m["average_accuracy"] == pytest.approx(7 / 10)
  assert m["mean_group_accuracy"] == pytest.approx((0.75 + 0.5 + 0 + 1) / 4)
  assert m["average_accuracy_train_weighted"] == pytest.approx((70 * 0.75 + 10 * 0.5 + 5 * 0 + 15 * 1) / 100)
  assert [g["n"] for g in m["groups"]] == [4, 2, 1, 3]
  assert m["groups"][1] == {"y": 0, "place": 1, "n": 2, "accuracy": 0.5}
  assert m["class_accuracy"] == pytest.approx([4 / 6, 3 / 4])
  assert m["worst_class_accuracy"] == pytest.approx(4 / 6)


def test_worst_group_is_lowest_accuracy_not_smallest():
  correct = np.array([10, 1, 2, 50])
  total = np.array([100, 1, 2, 60])   # the smallest groups are perfect
  m = group_metrics(correct, total, 2)
  assert m["worst_group_accuracy"] == pytest.approx(0.1)
  assert m["worst_group"] == {"y": 0, "place": 0}


def test_empty_group_is_ignored_and_k_classes():
  # 3 classes x 3 places, one group empty.
  correct = np.array([1, 2, 3, 0, 4, 5, 6, 7, 8], float)
  total = np.array([2, 2, 3, 0, 4, 5, 6, 8, 8], float)
  m = group_metrics(correct, total, 3, train_total=np.ones(9))
  assert m["groups"][3]["accuracy"] is None
  assert m["worst_group_accuracy"] == pytest.approx(0.5)
  # Train weighting over present groups only.
  acc = [0.5, 1, 1, 1, 1, 1, 7 / 8, 1]
  assert m["average_accuracy_train_weighted"] == pytest.approx(np.mean(acc))
