"""Two-criterion pruning: decisions, Psi, and the log + kept dataset on disk."""
import csv
import os

import numpy as np
import pytest

from spurjax.data.folder import read_folder
from spurjax.ddb import prune as P
from spurjax.errors import SpurjaxError


def test_source_reference_prob_is_mean_prob_of_own_class():
  probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
  labels = np.array([0, 0, 1, 1])
  np.testing.assert_allclose(P.source_reference_prob(probs, labels), [0.8, 0.7])
  psi = P.source_reference_prob(probs[:2], labels[:2], num_classes=2)
  assert psi[0] == pytest.approx(0.8) and np.isnan(psi[1])
  with pytest.raises(SpurjaxError):
    P.source_reference_prob(probs, labels[:3])


def test_prune_decisions_need_both_criteria():
  Psi = 0.8  # noqa: N806
  psi = np.array([0.5, 0.9, 0.5, 0.9, 0.8, 0.5])
  rho = np.array([0.5, 0.5, 0.1, 0.1, 0.5, 0.3])
  kept = P.prune_decisions(psi, np.full(6, Psi), rho, 0.3)
  # both pass | prob did not drop | attribution too small | neither | psi == Psi (strict) | rho == thr (strict)
  np.testing.assert_array_equal(kept, [True, False, False, False, False, False])
  with pytest.raises(SpurjaxError, match="NaN"):
    P.prune_decisions([0.1], [np.nan], [1.0], 0.3)
  with pytest.raises(SpurjaxError, match="length"):
    P.prune_decisions([0.1, 0.2], [0.5], [1.0], 0.3)


def test_build_records_looks_up_psi_by_source_class():
  recs = P.build_records(source_file=["a.png", "b.png", "c.png"], source_class=[0, 1, 1], target_class=[1, 0, 0],
                         sample=[0, 0, 1], place=[0, 1, 1], psi=[0.5, 0.5, 0.95], rho=[1.0, 0.1, 1.0],
                         rho_norm=[0.9, 0.9, 0.9], Psi=[0.8, 0.9], threshold=0.3)
  assert [r["Psi_i"] for r in recs] == [0.8, 0.9, 0.9]
  assert [r["kept"] for r in recs] == [True, False, False]
  by_norm = P.build_records(source_file=["a.png", "b.png", "c.png"], source_class=[0, 1, 1], target_class=[1, 0, 0],
                            sample=[0, 0, 1], place=[0, 1, 1], psi=[0.5, 0.5, 0.95], rho=[1.0, 0.1, 1.0],
                            rho_norm=[0.9, 0.9, 0.9], Psi=[0.8, 0.9], threshold=0.3, score="rho_norm")
  assert [r["kept"] for r in by_norm] == [True, True, False]


def test_keep_top_keeps_the_best_share_of_passing_edits_per_target_class():
  kept = np.array([True, True, True, False, True, True, True])
  score = np.array([0.5, 0.9, 0.7, 5.0, 0.2, 0.4, 0.3])
  target = np.array([1, 1, 1, 1, 0, 0, 0])
  # target 1: 3 passing edits, ceil(0.5 * 3) = 2 best (0.9, 0.7); the failed one stays out whatever its
  # score. Target 0: ceil(0.5 * 3) = 2 best (0.4, 0.3).
  np.testing.assert_array_equal(P.keep_top(kept, score, target, 0.5), [False, True, True, False, False, True, True])
  np.testing.assert_array_equal(P.keep_top(kept, score, target, 1.0), kept)
  np.testing.assert_array_equal(P.keep_top(kept, score, target, 0.01), [False, True, False, False, False, True, False])
  with pytest.raises(SpurjaxError, match="ddb.prune.top"):
    P.keep_top(kept, score, target, 0.0)
  recs = P.build_records(source_file=["a", "b", "c"], source_class=[0, 0, 0], target_class=[1, 1, 1],
                         sample=[0, 1, 2], place=[0, 0, 0], psi=[0.5, 0.5, 0.5], rho=[1.0, 3.0, 2.0],
                         rho_norm=[0.9, 0.9, 0.9], Psi=[0.8, 0.9], threshold=0.3, top=0.5)
  assert [r["kept"] for r in recs] == [False, True, True]


def test_prune_top_is_in_the_fingerprint_through_the_stage_group():
  import types

  from spurjax.config_base import base_config
  from spurjax.ddb.prune.stage import STAGE
  from spurjax.stages import fingerprint
  cfg = base_config()
  ctx = types.SimpleNamespace(cfg=cfg)
  up = {u: "x" for u in STAGE.upstream_of(cfg)}
  before = fingerprint(STAGE, ctx, up)[0]
  cfg.ddb.prune.top = 0.5
  assert fingerprint(STAGE, ctx, up)[0] != before


def _records(n=5):
  rng = np.random.default_rng(0)
  src = np.array([0, 0, 1, 1, 0])[:n]
  recs = P.build_records(source_file=[f"src/{i}.png" for i in range(n)], source_class=src, target_class=1 - src,
                         sample=np.arange(n) % 2, place=np.array([0, 1, 1, 0, 1])[:n],
                         psi=np.array([0.1, 0.9, 0.2, 0.3, 0.2])[:n], rho=np.array([1.0, 1.0, 0.5, 0.1, 0.4])[:n],
                         rho_norm=rng.uniform(size=n), Psi=[0.7, 0.8], threshold=0.3)
  images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
  masks = [np.pad(np.ones((4, 4), bool), 2) for _ in range(n)]
  return recs, images, masks


def test_write_outputs_log_and_kept_dataset(tmp_path):
  recs, images, masks = _records()
  kept = [r["kept"] for r in recs]
  assert kept == [True, False, True, False, True]
  out = str(tmp_path / "prune")
  summary = P.write_prune_outputs(out, recs, images, masks)
  assert summary == {"n": 5, "kept": 3, "dir": out}
  with open(os.path.join(out, "prune_log.csv"), newline="") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == P.LOG_COLUMNS
    rows = list(reader)
  assert [r["kept"] for r in rows] == ["1", "0", "1", "0", "1"]
  assert float(rows[0]["psi"]) == pytest.approx(0.1) and float(rows[2]["Psi_i"]) == pytest.approx(0.8)
  with open(os.path.join(out, "metadata.csv"), newline="") as f:
    assert tuple(csv.DictReader(f).fieldnames) == P.META_COLUMNS
  table = read_folder(out, num_classes=2, num_places=2)
  assert len(table) == 3
  np.testing.assert_array_equal(table.y, [1, 0, 1])  # the target classes
  np.testing.assert_array_equal(table.place, [0, 1, 1])  # the sources' places
  np.testing.assert_array_equal(table.split, [0, 0, 0])
  np.testing.assert_array_equal(table.image(1), images[2])
  np.testing.assert_array_equal(table.mask(0), masks[0])
  other = str(tmp_path / "prune2")  # without masks: the kept dataset has an empty mask column
  P.write_prune_outputs(other, recs[:3], images[:3], None)
  assert len(P.read_prune_log(other)) == 3
  assert read_folder(other, verify="none").mask_refs == [None, None]


def test_write_outputs_rejects_bad_records(tmp_path):
  recs, images, masks = _records()
  with pytest.raises(SpurjaxError, match="images"):
    P.write_prune_outputs(str(tmp_path / "a"), recs, images[:2], masks)
  recs[0]["place"] = -1
  with pytest.raises(SpurjaxError, match="place"):
    P.write_prune_outputs(str(tmp_path / "b"), recs, images, masks)
  assert not os.path.exists(tmp_path / "b" / P.META_FILE)
  del recs[0]["psi"]
  with pytest.raises(SpurjaxError, match="psi"):
    P.write_prune_outputs(str(tmp_path / "c"), recs, images, masks)
