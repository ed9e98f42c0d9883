"""CelebA, MetaShift and tfds readers on tiny fake datasets, including every error case."""
import os
import pickle

import chex
import numpy as np
import pytest
from PIL import Image

from spurjax.data import celeba, metashift
from spurjax.data.table import TEST, TRAIN, VAL
from spurjax.errors import SpurjaxError

# ----------------------------------------------------------------------------- CelebA

ATTRS = ["Bangs", "Blond_Hair", "Male"]
CELEB_ROWS = [  # image_id, partition, Bangs, Blond_Hair, Male
    ("000001.jpg", 0, -1, 1, -1),
    ("000002.jpg", 0, 1, -1, 1),
    ("000003.jpg", 0, -1, -1, -1),
    ("000004.jpg", 1, 1, 1, 1),
    ("000005.jpg", 2, -1, -1, 1),
    ("000006.jpg", 2, 1, 1, -1),
]


def _jpeg(path, value=0, size=(10, 12)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def make_celeba(root, rows=CELEB_ROWS, attrs=ATTRS, part_rows=None, nested=False, images=True):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "list_attr_celeba.csv"), "w") as f:
    f.write(",".join(["image_id"] + attrs) + "\n")
    for r in rows:
      f.write(",".join(str(v) for v in (r[0],) + tuple(r[2:])) + "\n")
  with open(os.path.join(root, "list_eval_partition.csv"), "w") as f:
    f.write("image_id,partition\n")
    for image_id, part in part_rows or [(r[0], r[1]) for r in rows]:
      f.write(f"{image_id},{part}\n")
  if images:
    folder = os.path.join(root, "img_align_celeba", *(["img_align_celeba"] if nested else []))
    for i, r in enumerate(rows):
      _jpeg(os.path.join(folder, r[0]), value=20 * i)
  return root


def test_celeba_reads_labels(tmp_path):
  t = celeba.read_celeba(make_celeba(str(tmp_path / "c")))
  np.testing.assert_array_equal(t.y, [1, 0, 0, 1, 0, 1])
  np.testing.assert_array_equal(t.place, [0, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(t.split, [0, 0, 0, 1, 2, 2])
  assert (t.num_classes, t.num_places) == (2, 2)
  assert t.refs[0].endswith(os.path.join("img_align_celeba", "000001.jpg"))
  img = t.image(3)
  chex.assert_shape(img, (12, 10, 3))
  assert img.dtype == np.uint8
  other = celeba.read_celeba(str(tmp_path / "c"), target="Bangs", spurious="Blond_Hair", check_files=True)
  np.testing.assert_array_equal(other.y, [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(other.place, t.y)


def test_celeba_nested_image_folder(tmp_path):
  t = celeba.read_celeba(make_celeba(str(tmp_path / "c"), nested=True), check_files=True)
  assert os.path.isfile(t.refs[5])


@pytest.mark.parametrize("case, match", [
    ("no_partition_file", "list_eval_partition.csv: file not found"),
    ("no_attr_file", "list_attr_celeba.csv: file not found"),
    ("no_images", "img_align_celeba: image folder not found"),
    ("unknown_target", "unknown attribute 'Blonde'"),
    ("no_partition_column", "unknown column 'partition'"),
    ("bad_value", "row 4: column 'Blond_Hair' = '0', expected -1 or 1"),
    ("bad_partition", "row 3: column 'partition' = '3'"),
    ("extra_partition_id", "row 8: image_id '000099.jpg' is not in list_attr_celeba.csv"),
    ("missing_partition_id", "list_attr_celeba.csv: row 7: image_id '000006.jpg' is not in"),
    ("duplicate_id", "duplicate image_id '000001.jpg'"),
    ("short_row", "row 2: 3 fields, header has 4"),
    ("missing_file", "image file not found"),
])
def test_celeba_errors(tmp_path, case, match):
  root = str(tmp_path / "c")
  rows = list(CELEB_ROWS)
  kw = {}
  target = "Blond_Hair"
  if case == "bad_value":
    rows[2] = ("000003.jpg", 0, -1, 0, -1)
  elif case == "bad_partition":
    kw["part_rows"] = [("000001.jpg", 0), ("000002.jpg", 3)] + [(r[0], r[1]) for r in rows[2:]]
  elif case == "extra_partition_id":
    kw["part_rows"] = [(r[0], r[1]) for r in rows] + [("000099.jpg", 0)]
  elif case == "missing_partition_id":
    kw["part_rows"] = [(r[0], r[1]) for r in rows[:-1]]
  elif case == "duplicate_id":
    rows.append(rows[0])
  elif case == "unknown_target":
    target = "Blonde"
  make_celeba(root, rows=rows, images=case != "no_images", **kw)
  if case == "no_partition_file":
    os.remove(os.path.join(root, "list_eval_partition.csv"))
  elif case == "no_attr_file":
    os.remove(os.path.join(root, "list_attr_celeba.csv"))
  elif case == "no_partition_column":
    with open(os.path.join(root, "list_eval_partition.csv"), "w") as f:
      f.write("image_id,part\n000001.jpg,0\n")
  elif case == "short_row":
    with open(os.path.join(root, "list_attr_celeba.csv"), "w") as f:
      f.write("image_id,Bangs,Blond_Hair,Male\n000001.jpg,1,1\n")
  elif case == "missing_file":
    os.remove(os.path.join(root, "img_align_celeba", "000004.jpg"))
  with pytest.raises(SpurjaxError, match=match.replace("(", r"\(").replace(")", r"\)")):
    celeba.read_celeba(root, target=target, check_files=case == "missing_file")


def test_celeba_root_missing(tmp_path):
  with pytest.raises(SpurjaxError, match="CelebA folder not found"):
    celeba.read_celeba(str(tmp_path / "nope"))
  with pytest.raises(SpurjaxError, match="both 'Male'"):
    celeba.read_celeba(make_celeba(str(tmp_path / "c")), target="Male", spurious="Male")


# ----------------------------------------------------------------------------- MetaShift

MS_LAYOUT = {  # folder -> number of images
    "train/cat/cat(sofa)": 3, "train/cat/cat(bed)": 2, "train/dog/dog(bench)": 2, "train/dog/dog(bike)": 3,
    "test/cat/cat(shelf)": 10, "test/dog/dog(shelf)": 10,
}


def make_metashift(root, layout=MS_LAYOUT):
  for folder, n in layout.items():
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i in range(n):
      _jpeg(os.path.join(root, folder, f"img{i:03d}.jpg"), value=i, size=(8, 6))
  return root


def test_metashift_reads_layout(tmp_path):
  root = make_metashift(str(tmp_path / "m"))
  with open(os.path.join(root, "train", "cat", "cat(sofa)", "notes.txt"), "w") as f:
    f.write("not an image")
  t = metashift.read_metashift(root)
  assert list(t.class_names) == ["cat", "dog"]
  assert list(t.place_names) == ["sofa", "bed", "bench", "bike", "shelf"]
  assert (t.num_classes, t.num_places) == (2, 5)
  assert len(t) == 30
  tr = t.indices("train")
  assert len(tr) == 10
  pairs = sorted(zip(t.y[tr].tolist(), t.place[tr].tolist()))
  assert pairs == sorted([(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 2)] * 2 + [(1, 3)] * 3)
  held = np.nonzero(t.split != TRAIN)[0]
  assert (t.place[held] == 4).all()
  assert (t.split == VAL).sum() == 3 and (t.split == TEST).sum() == 17  # 15 % of 20 to val
  np.testing.assert_array_equal(metashift.val_indices(20), np.sort(np.random.RandomState(0).permutation(20)[17:]))
  test_paths = [t.refs[i] for i in held]
  assert test_paths[:10] == sorted(test_paths[:10]) and "cat(shelf)" in test_paths[0]
  chex.assert_shape(t.image(0), (6, 8, 3))


def test_metashift_val_folder_and_extra_context(tmp_path):
  layout = dict(MS_LAYOUT)
  layout.update({"val/cat/cat(shelf)": 2, "val/dog/dog(shelf)": 1, "train/dog/dog(grass)": 1})
  t = metashift.read_metashift(make_metashift(str(tmp_path / "m"), layout))
  assert list(t.place_names) == ["sofa", "bed", "bench", "bike", "shelf", "grass"]
  assert (t.split == VAL).sum() == 3 and (t.split == TEST).sum() == 20
  assert (t.place[(t.split == TRAIN) & (t.y == 1)] == 5).sum() == 1


@pytest.mark.parametrize("case, match", [
    ("no_root", "MetaShift folder not found"),
    ("no_test", "folder not found: .*test$"),
    ("no_dog", "folder not found: .*train/dog$"),
    ("bad_name", r"is not of the form cat\(<context>\)"),
    ("wrong_animal", r"is a dog folder inside cat/"),
    ("no_contexts", r"no dog\(<context>\) folders"),
    ("no_images", "no images under .*test/dog"),
])
def test_metashift_errors(tmp_path, case, match):
  root = str(tmp_path / "m")
  layout = dict(MS_LAYOUT)
  if case == "no_test":
    layout = {k: v for k, v in layout.items() if not k.startswith("test")}
  elif case == "no_dog":
    layout = {k: v for k, v in layout.items() if not k.startswith("train/dog")}
  elif case == "bad_name":
    layout["train/cat/sofa"] = 1
  elif case == "wrong_animal":
    layout["train/cat/dog(bench)"] = 1
  elif case == "no_images":
    layout["test/dog/dog(shelf)"] = 0
  if case != "no_root":
    make_metashift(root, layout)
  if case == "no_contexts":
    os.makedirs(os.path.join(root, "test", "dog"), exist_ok=True)
    for name in os.listdir(os.path.join(root, "test", "dog")):
      for f in os.listdir(os.path.join(root, "test", "dog", name)):
        os.remove(os.path.join(root, "test", "dog", name, f))
      os.rmdir(os.path.join(root, "test", "dog", name))
  with pytest.raises(SpurjaxError, match=match):
    metashift.read_metashift(root)


# ----------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")

  class SpurTiny(tfds.core.GeneratorBasedBuilder):
    """Tiny images whose first pixels encode index, label and attribute."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(6, 5, 3)),
          "mask": tfds.features.Image(shape=(6, 5, 1)),
          "label": tfds.features.ClassLabel(names=["bird", "flower"]),
          "attrs": {"water": np.bool_, "count": np.int64},
      }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 10), "validation": self._generate_examples(100, 4),
              "test": self._generate_examples(200, 6)}

    def _generate_examples(self, start, n):
      for i in range(start, start + n):
        label, water = i % 2, (i // 2) % 2 == 1
        image = np.zeros((6, 5, 3), np.uint8)
        image[0, 0] = (i, label, water)
        mask = np.zeros((6, 5, 1), np.uint8)
        mask[: 1 + i % 5] = 255
        # PIL images / encoded bytes let tfds encode without TensorFlow.
        yield i, {"image": Image.fromarray(image), "mask": Image.fromarray(mask[..., 0]),
                  "label": label, "attrs": {"water": water, "count": i % 3}}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  SpurTiny(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_reads_back(tfds_dir):
  from spurjax.data.tfds_source import read_tfds
  t = read_tfds("spur_tiny", data_dir=tfds_dir, attribute_key="attrs/water", mask_key="mask")
  assert len(t) == 20 and (t.num_classes, t.num_places) == (2, 2)
  assert list(t.class_names) == ["bird", "flower"]
  assert [int((t.split == s).sum()) for s in (TRAIN, VAL, TEST)] == [10, 4, 6]
  seen = set()
  for i in range(len(t)):
    img = t.image(i)
    chex.assert_shape(img, (6, 5, 3))
    assert img.dtype == np.uint8
    idx, label, water = img[0, 0].tolist()
    seen.add(idx)
    assert (t.y[i], t.place[i]) == (label, water)
    assert {0: range(0, 10), 1: range(100, 104), 2: range(200, 206)}[int(t.split[i])].count(idx) == 1
    mask = t.mask(i)
    chex.assert_shape(mask, (6, 5))
    assert mask.dtype == bool and mask.sum() == 5 * (1 + idx % 5)
  assert len(seen) == 20
  reader = pickle.loads(pickle.dumps(t.read_image))
  np.testing.assert_array_equal(reader(t.refs[7]), t.image(7))


def test_tfds_split_map_and_int_attribute(tfds_dir):
  from spurjax.data.tfds_source import read_tfds
  t = read_tfds("spur_tiny", data_dir=tfds_dir, attribute_key="attrs/count",
                split_map={"train": "train[:6]", "test": "test"})
  assert len(t) == 12 and t.num_places == 3
  assert [int((t.split == s).sum()) for s in (TRAIN, VAL, TEST)] == [6, 0, 6]
  for i in range(len(t)):
    assert t.place[i] == t.image(i)[0, 0, 0] % 3
  none = read_tfds("spur_tiny", data_dir=tfds_dir, attribute_key=None)
  assert none.num_places == 1 and (none.place == 0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "no_such_dataset_xyz"}, "cannot open the dataset"),
    ({"label_key": "class"}, "no feature 'class'"),
    ({"attribute_key": "attrs/smile"}, "no feature 'attrs/smile'"),
    ({"image_key": "picture"}, "no feature 'picture'"),
    ({"split_map": {"train": "training"}}, "split 'training' not found"),
    ({"split_map": {"dev": "train"}}, "key 'dev' is not one of"),
])
def test_tfds_errors(tfds_dir, kwargs, match):
  from spurjax.data.tfds_source import read_tfds
  kwargs = {"name": "spur_tiny", "attribute_key": "attrs/water", **kwargs}
  with pytest.raises(SpurjaxError, match=match):
    read_tfds(data_dir=tfds_dir, **kwargs)
  with pytest.raises(SpurjaxError, match="out of range"):
    read_tfds("spur_tiny", data_dir=tfds_dir, attribute_key="attrs/water").read_image(99)
