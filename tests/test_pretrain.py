"""`spurjax pretrain` and `model.init_from`: train through the one trainer, save, load, re-head."""
import os

import jax
import numpy as np
import pytest

from spurjax import cli
from spurjax.config_util import load_config
from spurjax.data import broad, load_table
from spurjax.errors import SpurjaxError
from spurjax.train import backbone, loop


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pre")
  broad.generate(str(tmp / "corpus"), image_size=16, train_per_combo=1, val_per_combo=1, seed=0)
  out = tmp / "w.npz"
  rc = cli.main(["pretrain", "--data", str(tmp / "corpus"), "--out", str(out), "--config", "configs/synth.py:tiny",
                 "--config.pretrain.num_epochs=1", "--config.pretrain.batch_size=16",
                 "--config.model.init_from=builtin"])  # init_from of the task config is ignored for pretraining
  assert rc == 0 and out.is_file()
  return out


@pytest.mark.slow
def test_weights_file_holds_the_model_and_its_provenance(weights):
  flat, meta = backbone.load_weights(str(weights))
  assert meta["model"] == "cnn3" and meta["num_classes"] == len(broad.OBJECT_NAMES)
  assert meta["classes"] == list(broad.OBJECT_NAMES) and meta["num_epochs"] == 1
  assert flat["params/fc/kernel"].shape == (128, len(broad.OBJECT_NAMES))
  assert "batch_stats/bn_0/mean" in flat


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("task") / "data"


def _task(data_dir, init_from):
  cfg = load_config("configs/synth.py:tiny")
  cfg.data.cache_dir = str(data_dir)
  cfg.model.init_from = init_from
  return cfg, load_table(cfg.data)


@pytest.mark.slow
def test_init_from_loads_the_backbone_and_reinitialises_the_head(data_dir, weights):
  flat, _ = backbone.load_weights(str(weights))
  cfg, table = _task(data_dir, str(weights))
  _, v = loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(v["params"]["conv_1"]["kernel"], flat["params/conv_1/kernel"])
  np.testing.assert_array_equal(v["batch_stats"]["bn_2"]["var"], flat["batch_stats/bn_2/var"])
  assert v["params"]["fc"]["kernel"].shape == (128, 2)
  cfg.model.init_from = ""
  _, fresh = loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  assert not np.array_equal(fresh["params"]["conv_1"]["kernel"], flat["params/conv_1/kernel"])


@pytest.mark.slow
def test_fit_starts_from_the_pretrained_backbone(tmp_path, data_dir, weights):
  cfg, table = _task(data_dir, str(weights))
  cfg.train.num_epochs = 1
  cfg.optim.lr = 0.0  # nothing moves: the trained model is the loaded one
  cfg.optim.weight_decay = 0.0
  loop.fit(cfg, table, str(tmp_path / "w"))
  got = loop.load_best_variables(cfg, table, str(tmp_path / "w"))
  flat, _ = backbone.load_weights(str(weights))
  np.testing.assert_allclose(np.asarray(got["params"]["conv_0"]["kernel"]), flat["params/conv_0/kernel"])


@pytest.mark.slow
def test_bad_init_from(tmp_path, data_dir, weights):
  cfg, table = _task(data_dir, str(tmp_path / "missing.npz"))
  with pytest.raises(SpurjaxError, match="not found"):
    loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  cfg.model.name = "cnn16"
  cfg.model.init_from = str(weights)
  with pytest.raises(SpurjaxError, match="weights are for model 'cnn3'"):
    loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  cfg.model.init_from = "builtin"
  cfg.model.name = "cnn"
  with pytest.raises(SpurjaxError, match="ships no pretrained weights for model 'cnn'"):
    loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  (tmp_path / "junk.npz").write_bytes(b"nope")
  cfg.model.init_from = str(tmp_path / "junk.npz")
  with pytest.raises(SpurjaxError, match="not a spurjax weights file"):
    loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  assert cli.main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2


def test_builtin_weights_are_shipped_for_the_benchmark_classifier(data_dir):
  cfg, table = _task(data_dir, "builtin")
  assert cfg.model.name in backbone.available()
  path = backbone.builtin_path(cfg.model.name)
  assert os.path.getsize(path) < 1_000_000
  _, meta = backbone.load_weights(path)
  assert meta["model"] == cfg.model.name and not set(meta["classes"]) & {"bird", "flower"}
  loop.init_variables(cfg, table, jax.random.PRNGKey(0))
