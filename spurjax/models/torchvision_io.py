"""torchvision ResNet weights <-> spurjax ResNet variables, without importing torch.

`load_state_dict` reads `.safetensors` (through `spurjax.safetensors_io`) and torch zip
checkpoints (`.pth`/`.pt`). The latter are a zip holding `data.pkl` plus one raw file per
storage; a restricted unpickler rebuilds each tensor as a numpy array from its storage and
strides, and refuses any other object. Half and bfloat16 tensors come back as float32.

Naming: flax path ("layer1_0", "downsample_1", "scale") <-> "layer1.0.downsample.1.weight";
conv kernels HWIO <-> OIHW, dense kernels (in, out) <-> (out, in), BatchNorm
`mean`/`var` (batch_stats) <-> `running_mean`/`running_var`.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from spurjax import safetensors_io
from spurjax.errors import SpurjaxError

log = logging.getLogger(__name__)

TORCHVISION_MODELS = ("resnet18", "resnet50")
_LIST_RE = re.compile(r"^(.+)_(\d+)$")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
_IGNORED_SUFFIX = "num_batches_tracked"

# ------------------------------------------------------------------ reading files

# torch storage class name -> (numpy dtype of the raw bytes, is bfloat16)
_TORCH_STORAGES = {
    "FloatStorage": (np.float32, False), "DoubleStorage": (np.float64, False),
    "HalfStorage": (np.float16, False), "BFloat16Storage": (np.uint16, True),
    "LongStorage": (np.int64, False), "IntStorage": (np.int32, False),
    "ShortStorage": (np.int16, False), "CharStorage": (np.int8, False),
    "ByteStorage": (np.uint8, False), "BoolStorage": (np.bool_, False),
}


def _widen(a: np.ndarray, is_bf16: bool = False) -> np.ndarray:
  """bfloat16 (uint16 bits where `is_bf16`, or ml_dtypes.bfloat16) and float16 -> float32; others unchanged."""
  if is_bf16:
    return (a.astype(np.uint32) << 16).view(np.float32)
  if a.dtype in (np.float16, ml_dtypes.bfloat16):
    return a.astype(np.float32)
  return a


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype, self.is_bf16 = _TORCH_STORAGES[name]


class _Storage:
  def __init__(self, data: np.ndarray, is_bf16: bool):
    self.data, self.is_bf16 = data, is_bf16


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *unused) -> np.ndarray:
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  data = storage.data
  if len(size) != len(stride):
    raise ValueError(f"tensor has size {size} but stride {stride}")
  if all(s > 0 for s in size):
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= data.size:
      raise ValueError(f"tensor of size {size} reads past its storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(data[offset:], size, [st * data.itemsize for st in stride])
    out = np.array(view)
  else:
    out = np.zeros(size, data.dtype)
  return _widen(out, storage.is_bf16)


def _rebuild_parameter(data, *unused):
  return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds a torch state dict as numpy arrays; any other global is refused."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
    super().__init__(file, encoding="utf-8")
    self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module == "torch" and name in _TORCH_STORAGES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only tensors and dicts are allowed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    stype, key = pid[1], str(pid[2])
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      dtype = np.dtype(stype.dtype).newbyteorder(">" if self._big_endian else "<")
      if len(raw) % dtype.itemsize:
        raise pickle.UnpicklingError(f"storage {key} has {len(raw)} bytes, not a multiple of {dtype.itemsize}")
      data = np.frombuffer(raw, dtype).astype(np.dtype(stype.dtype).newbyteorder("="))
      self._storages[key] = _Storage(data, stype.is_bf16)
    return self._storages[key]


def _load_torch_zip(path: str) -> Any:
  if not zipfile.is_zipfile(path):
    raise SpurjaxError(f"{path}: not a torch zip checkpoint (legacy pre-1.6 torch files are not supported; "
                       "re-save it with a recent torch.save or as .safetensors)")
  try:
    with zipfile.ZipFile(path) as archive:
      pkls = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
      if len(pkls) != 1:
        raise SpurjaxError(f"{path}: expected one data.pkl in the torch checkpoint, found {len(pkls)}")
      prefix = pkls[0][:-len("data.pkl")]
      big_endian = False
      if f"{prefix}byteorder" in archive.namelist():
        big_endian = archive.read(f"{prefix}byteorder").decode().strip() == "big"
      with archive.open(pkls[0]) as f:
        return _TorchUnpickler(f, archive, prefix, big_endian).load()
  except SpurjaxError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, TypeError, EOFError,
          AttributeError, IndexError, OSError) as e:
    raise SpurjaxError(f"{path}: cannot read torch checkpoint: {e}") from None


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  return {k: _widen(v) for k, v in safetensors_io.read(path).items()}


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The state dict inside a checkpoint ({"state_dict": ...} / {"model": ...} unwrapped, "module." dropped)."""
  if isinstance(obj, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
    for key in ("state_dict", "model"):
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    raise SpurjaxError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise SpurjaxError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    out[str(key)] = value
  if out and all(k.startswith("module.") for k in out):
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` or torch `.pth`/`.pt` state dict as numpy arrays (no torch needed)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: no such weights file")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    return _unwrap(_load_safetensors(path), path)
  if ext in (".pth", ".pt", ".bin", ".ckpt"):
    return _unwrap(_load_torch_zip(path), path)
  raise SpurjaxError(f"{path}: unknown weights format {ext!r}; use .safetensors, .pth or .pt")


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes a numpy state dict (e.g. from `variables_to_torchvision`) as `.safetensors`."""
  safetensors_io.write(state_dict, path)

# ------------------------------------------------------------------ converting


def _check_torchvision_name(model_name: str) -> None:
  if model_name not in TORCHVISION_MODELS:
    raise SpurjaxError(f"model {model_name!r} has no torchvision layout; "
                       f"use one of {', '.join(TORCHVISION_MODELS)}")


def torch_key(path: tuple[str, ...]) -> str:
  """("layer1_0", "downsample_1", "scale") -> "layer1.0.downsample.1.weight"."""
  *modules, leaf = path
  return ".".join([_LIST_RE.sub(r"\1.\2", m) for m in modules] + [_LEAF_TO_TORCH[leaf]])


def _to_torch(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return np.transpose(a, (3, 2, 0, 1) if a.ndim == 4 else (1, 0))
  return a


def _to_flax(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return np.transpose(a, (2, 3, 1, 0) if a.ndim == 4 else (1, 0))
  return a


def _template(model_name: str, num_classes: int) -> dict:
  """Flat {(collection, *path): shape} of the spurjax model's variables (no compute)."""
  from spurjax.models import get_model  # pylint: disable=import-outside-toplevel
  _check_torchvision_name(model_name)
  model = get_model(model_name, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes)).items()}


def _fresh_head(init_variables, model_name: str, num_classes: int, feat: int, what: str) -> dict:
  """fc kernel/bias for `num_classes` taken from init_variables, or freshly initialised."""
  if init_variables is None:  # same law as resnet.FC_KERNEL_INIT: uniform(+-1/sqrt(fan_in))
    limit = 1.0 / np.sqrt(feat)
    kernel = np.random.default_rng(0).uniform(-limit, limit, (feat, num_classes)).astype(np.float32)
    return {"kernel": kernel, "bias": np.zeros((num_classes,), np.float32)}
  try:
    head = {k: np.asarray(init_variables["params"]["fc"][k], np.float32) for k in ("kernel", "bias")}
  except (KeyError, TypeError):
    raise SpurjaxError(f"{what}: init_variables has no params/fc head for {model_name}") from None
  if head["kernel"].shape != (feat, num_classes) or head["bias"].shape != (num_classes,):
    raise SpurjaxError(f"{what}: init_variables fc head has shape {head['kernel'].shape}, "
                       f"expected {(feat, num_classes)}")
  return head


def variables_from_torchvision(state_dict: Mapping[str, Any], model_name: str, num_classes: int,
                               init_variables=None, what: str = "state dict") -> dict:
  """Converts a torchvision ResNet state dict into `{"params", "batch_stats"}` for `get_model(model_name)`.

  Every tensor must be used (`num_batches_tracked` is ignored) and every variable found,
  with the right shape. When the file's `fc` has a different number of classes, the fc
  head comes from `init_variables` (or is freshly initialised) and a warning is logged.

  Raises:
    SpurjaxError naming `what` and the missing, unexpected or mis-shaped tensor.
  """
  template = _template(model_name, num_classes)
  feat = template[("params", "fc", "kernel")][0]
  fc_shape = np.shape(state_dict["fc.weight"]) if "fc.weight" in state_dict else None
  head = None
  if fc_shape is not None and len(fc_shape) == 2 and fc_shape[1] == feat and fc_shape[0] != num_classes:
    head = _fresh_head(init_variables, model_name, num_classes, feat, what)
    log.warning("%s: fc has %d classes, the model %d; keeping the %s fc head", what, fc_shape[0],
                num_classes, "freshly initialised" if init_variables is None else "init_variables'")

  flat, used = {}, set()
  missing = [torch_key(p[1:]) for p in template if torch_key(p[1:]) not in state_dict]
  if missing:
    raise SpurjaxError(f"{what}: missing tensor {missing[0]!r} for {model_name} ({len(missing)} missing in all)")
  for path, shape in template.items():
    key, leaf = torch_key(path[1:]), path[-1]
    used.add(key)
    if head is not None and path[1] == "fc":
      flat[path] = head[leaf]
      continue
    value = np.asarray(state_dict[key])
    want = _to_torch(leaf, np.zeros(shape, np.bool_)).shape
    if value.shape != want:
      raise SpurjaxError(f"{what}: tensor {key!r} has shape {value.shape}, expected {want} for {model_name}")
    flat[path] = _to_flax(leaf, value).astype(np.float32)
  unused = sorted(k for k in state_dict if k not in used and not k.endswith(_IGNORED_SUFFIX))
  if unused:
    raise SpurjaxError(f"{what}: unexpected tensor {unused[0]!r} for {model_name} ({len(unused)} unused in all)")
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))


def variables_to_torchvision(variables, model_name: str) -> dict[str, np.ndarray]:
  """The torchvision state dict (numpy, float32) for spurjax ResNet variables.

  Includes `num_batches_tracked` (0) so that torchvision's strict `load_state_dict` accepts it.
  """
  _check_torchvision_name(model_name)
  try:
    flat = traverse_util.flatten_dict({c: dict(variables[c]) for c in ("params", "batch_stats")})
    num_classes = np.shape(variables["params"]["fc"]["kernel"])[-1]
  except (KeyError, TypeError):
    raise SpurjaxError(f"variables are not {model_name} variables "
                       "(need params with an fc head, and batch_stats)") from None
  template = _template(model_name, num_classes)
  bad = sorted(p for p in set(template) | set(flat)
               if p not in template or p not in flat or np.shape(flat[p]) != template[p])
  if bad:
    raise SpurjaxError(f"variables do not fit {model_name}: {'/'.join(bad[0])} "
                       "is missing, unexpected or mis-shaped")
  out = {}
  for path, value in flat.items():
    key = torch_key(path[1:])
    out[key] = np.ascontiguousarray(_to_torch(path[-1], np.asarray(value, np.float32)))
    if path[-1] == "mean":
      out[key.rsplit(".", 1)[0] + "." + _IGNORED_SUFFIX] = np.array(0, np.int64)
  return dict(sorted(out.items()))
