"""Noise schedules and samplers for discrete-time diffusion models, in pure JAX.

A `Schedule` is a frozen, hashable description built from a diffusers
`scheduler_config.json` (`make_schedule`). Its tables (betas, cumulative alphas)
are numpy arrays derived on demand, so a schedule can be a static jit argument.

Training: `add_noise` and `training_target` (epsilon, v or sample).

Sampling: each sampler is `timesteps(sched, n)`, `init(sched, n, x, ...)` and a pure
`step(sched, state, model_output, i, x) -> (x_prev, state)` that works inside
`lax.scan` (the step index `i` may be traced). `init` precomputes per-step
coefficient tables in float64 numpy, so `step` has no branches on `i`:

- "ddim": DDIM (eta = 0 deterministic, eta > 0 adds per-example noise), with the
  timesteps and step rule of diffusers' `DDIMScheduler`.
- "dpmpp_2m": DPM-Solver++ multistep (order 2 by default) with the timesteps and
  update rule of diffusers' `DPMSolverMultistepScheduler` (algorithm "dpmsolver++").
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.errors import SpurjaxError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# Options of diffusers configs that change the maths but are not implemented here.
_MUST_BE_OFF = ("thresholding", "rescale_betas_zero_snr", "use_karras_sigmas", "use_exponential_sigmas",
                "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A DDPM noise schedule plus the sampler options read from a scheduler config.

  `clip_sample` defaults to False (diffusers' DDIM default is True, but latent
  models ship configs with it off); pixel-space configs that want it say so.
  """
  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  trained_betas: tuple[float, ...] | None = None
  prediction_type: str = "epsilon"
  steps_offset: int = 0
  set_alpha_to_one: bool = True
  timestep_spacing: str = "leading"
  clip_sample: bool = False
  clip_sample_range: float = 1.0
  # DPM-Solver++ options.
  solver_order: int = 2
  solver_type: str = "midpoint"
  lower_order_final: bool = True
  euler_at_final: bool = False
  final_sigmas_type: str = "zero"
  lambda_min_clipped: float = -math.inf

  @functools.cached_property
  def betas(self) -> np.ndarray:
    return _betas(self)

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    """Cumulative product of (1 - beta), float32 like the reference implementation."""
    return np.cumprod((np.float32(1.0) - self.betas).astype(np.float32), dtype=np.float32)


def _betas(s: Schedule) -> np.ndarray:
  n = s.num_train_timesteps
  if s.trained_betas is not None:
    return np.asarray(s.trained_betas, np.float32)
  if s.beta_schedule == "linear":
    return np.linspace(s.beta_start, s.beta_end, n, dtype=np.float64).astype(np.float32)
  if s.beta_schedule == "scaled_linear":
    root = np.linspace(s.beta_start**0.5, s.beta_end**0.5, n, dtype=np.float64).astype(np.float32)
    return root * root
  # squaredcos_cap_v2 (the cosine schedule of improved DDPM), beta capped at 0.999.
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.asarray([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], np.float32)


def _choice(config: Mapping[str, Any], key: str, allowed: tuple, default):
  value = config.get(key, default)
  if value is None:
    value = default
  if value not in allowed:
    options = ", ".join(map(str, allowed))
    raise SpurjaxError(f"scheduler config: {key}={value!r} is not supported (use one of {options})")
  return value


def _number(config: Mapping[str, Any], key: str, default, kind=float):
  value = config.get(key, default)
  if value is None:
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
    raise SpurjaxError(f"scheduler config: {key}={value!r} must be a {kind.__name__}")
  return kind(value)


def make_schedule(config: Mapping[str, Any] | None = None) -> Schedule:
  """A `Schedule` from a diffusers scheduler config dict (any scheduler class).

  Keys that do not affect the maths (`_class_name`, `skip_prk_steps`, ...) are
  ignored; options that would change it and are not implemented raise SpurjaxError.
  """
  config = dict(config or {})
  for key in _MUST_BE_OFF:
    if config.get(key):
      raise SpurjaxError(f"scheduler config: {key}={config[key]!r} is not supported (only false)")
  if config.get("variance_type") in ("learned", "learned_range"):
    raise SpurjaxError(f"scheduler config: variance_type={config['variance_type']!r} is not supported")
  _choice(config, "algorithm_type", ("dpmsolver++",), "dpmsolver++")
  trained = config.get("trained_betas")
  if trained is not None:
    try:
      trained = tuple(float(b) for b in trained)
    except (TypeError, ValueError):
      raise SpurjaxError("scheduler config: trained_betas must be a list of numbers") from None
  n = _number(config, "num_train_timesteps", 1000, int)
  if n < 2 or (trained is not None and len(trained) != n):
    raise SpurjaxError(f"scheduler config: num_train_timesteps={n} is invalid or does not match trained_betas")
  order = _number(config, "solver_order", 2, int)
  if order not in (1, 2):
    raise SpurjaxError(f"scheduler config: solver_order={order} is not supported (use 1 or 2)")
  sched = Schedule(
      num_train_timesteps=n,
      beta_start=_number(config, "beta_start", 0.0001),
      beta_end=_number(config, "beta_end", 0.02),
      beta_schedule=_choice(config, "beta_schedule", BETA_SCHEDULES, "linear"),
      trained_betas=trained,
      prediction_type=_choice(config, "prediction_type", PREDICTION_TYPES, "epsilon"),
      steps_offset=_number(config, "steps_offset", 0, int),
      set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
      timestep_spacing=_choice(config, "timestep_spacing", TIMESTEP_SPACINGS, "leading"),
      clip_sample=bool(config.get("clip_sample", False)),
      clip_sample_range=_number(config, "clip_sample_range", 1.0),
      solver_order=order,
      solver_type=_choice(config, "solver_type", ("midpoint", "heun"), "midpoint"),
      lower_order_final=bool(config.get("lower_order_final", True)),
      euler_at_final=bool(config.get("euler_at_final", False)),
      final_sigmas_type=_choice(config, "final_sigmas_type", ("zero", "sigma_min"), "zero"),
      lambda_min_clipped=_number(config, "lambda_min_clipped", -math.inf),
  )
  if not np.all(np.isfinite(sched.alphas_cumprod)) or np.any(sched.alphas_cumprod <= 0):
    raise SpurjaxError("scheduler config: beta_start/beta_end give an invalid noise schedule")
  return sched


def load_schedule(path: str) -> Schedule:
  """`make_schedule` from a scheduler_config.json file."""
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SpurjaxError(f"{path}: cannot read scheduler config ({e})") from None
  if not isinstance(config, dict):
    raise SpurjaxError(f"{path}: scheduler config must be a JSON object")
  return make_schedule(config)


# ---------------------------------------------------------------- training noise


def _per_example(table: np.ndarray, t, ndim: int) -> jax.Array:
  values = jnp.asarray(table, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def add_noise(sched: Schedule, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
  """Forward diffusion q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; `t` is () or (B,) int."""
  abar = _per_example(sched.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def training_target(sched: Schedule, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
  """What the network is trained to predict: the noise, the velocity v or x0."""
  if sched.prediction_type == "epsilon":
    return noise
  if sched.prediction_type == "sample":
    return x0
  abar = _per_example(sched.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def random_timesteps(sched: Schedule, rng: jax.Array, batch: int) -> jax.Array:
  """Uniform training timesteps in [0, num_train_timesteps)."""
  return jax.random.randint(rng, (batch,), 0, sched.num_train_timesteps, jnp.int32)


def _check_steps(sched: Schedule, n: int) -> None:
  if not isinstance(n, (int, np.integer)) or not 1 <= n <= sched.num_train_timesteps:
    raise SpurjaxError(f"num_steps={n!r} must be an integer in [1, {sched.num_train_timesteps}]")


def _x0_eps_coefs(sched: Schedule, abar: np.ndarray):
  """Per-step (a, b, c, d) with x0 = a x + b out and eps = c x + d out."""
  sa, sb = np.sqrt(abar), np.sqrt(1.0 - abar)
  one, zero = np.ones_like(abar), np.zeros_like(abar)
  if sched.prediction_type == "epsilon":
    return 1.0 / sa, -sb / sa, zero, one
  if sched.prediction_type == "v_prediction":
    return sa, -sb, sb, sa
  return zero, one, 1.0 / sb, -sa / sb


def _f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


# ---------------------------------------------------------------- DDIM


def ddim_timesteps(sched: Schedule, num_steps: int) -> np.ndarray:
  """The decreasing integer timesteps DDIM visits (diffusers `DDIMScheduler.set_timesteps`)."""
  _check_steps(sched, num_steps)
  n_train = sched.num_train_timesteps
  if sched.timestep_spacing == "linspace":
    ts = np.linspace(0, n_train - 1, num_steps).round()[::-1]
  elif sched.timestep_spacing == "leading":
    ts = (np.arange(num_steps) * (n_train // num_steps)).round()[::-1] + sched.steps_offset
  else:
    ts = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
  return np.ascontiguousarray(ts).astype(np.int64)


class DDIMState(NamedTuple):
  """Per-step coefficient tables (length n) and, for eta > 0, per-example noise keys."""
  timesteps: jax.Array
  x0_x: jax.Array
  x0_out: jax.Array
  eps_x: jax.Array
  eps_out: jax.Array
  sqrt_abar_prev: jax.Array
  dir_coef: jax.Array
  noise_std: jax.Array
  noise_keys: jax.Array | None


def ddim_init(sched: Schedule, num_steps: int, x: jax.Array | None = None, *, eta: float = 0.0,
              noise_keys: jax.Array | None = None) -> DDIMState:
  """DDIM tables for `num_steps` steps. With eta > 0, `noise_keys` holds one PRNG key per example."""
  del x
  if eta < 0:
    raise SpurjaxError(f"eta={eta} must be >= 0")
  ts = ddim_timesteps(sched, num_steps)
  ac = sched.alphas_cumprod.astype(np.float64)
  prev = ts - sched.num_train_timesteps // num_steps
  final = 1.0 if sched.set_alpha_to_one else ac[0]
  abar = ac[ts]
  abar_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
  variance = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
  std = float(eta) * np.sqrt(variance)
  if eta > 0 and noise_keys is None:
    raise SpurjaxError("DDIM with eta > 0 needs noise_keys (one PRNG key per example)")
  coefs = _x0_eps_coefs(sched, abar)
  return DDIMState(jnp.asarray(ts, jnp.int32), *_f32(*coefs, np.sqrt(abar_prev),
                                                     np.sqrt(np.maximum(1 - abar_prev - std**2, 0.0)), std),
                   noise_keys if eta > 0 else None)


def ddim_noise(keys: jax.Array, i, shape: tuple[int, ...]) -> jax.Array:
  """The eta-noise DDIM adds at step i: one standard normal draw per example key."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape, jnp.float32))(keys)


def ddim_step(sched: Schedule, state: DDIMState, model_output: jax.Array, i, x: jax.Array):
  """One DDIM update from step i's sample to the next (less noisy) one."""
  out = model_output.astype(jnp.float32)
  x0 = state.x0_x[i] * x + state.x0_out[i] * out
  eps = state.eps_x[i] * x + state.eps_out[i] * out
  if sched.clip_sample:
    x0 = jnp.clip(x0, -sched.clip_sample_range, sched.clip_sample_range)
  x_prev = state.sqrt_abar_prev[i] * x0 + state.dir_coef[i] * eps
  if state.noise_keys is not None:
    x_prev = x_prev + state.noise_std[i] * ddim_noise(state.noise_keys, i, x.shape[1:])
  return x_prev.astype(x.dtype), state


# ---------------------------------------------------------------- DPM-Solver++ (multistep)


def dpm_timesteps(sched: Schedule, num_steps: int) -> np.ndarray:
  """Timesteps of diffusers' `DPMSolverMultistepScheduler.set_timesteps`."""
  _check_steps(sched, num_steps)
  ac = sched.alphas_cumprod
  lam = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))
  clipped = int(np.searchsorted(lam[::-1], sched.lambda_min_clipped, side="left"))
  last = sched.num_train_timesteps - clipped
  if sched.timestep_spacing == "linspace":
    ts = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
  elif sched.timestep_spacing == "leading":
    ts = (np.arange(num_steps + 1) * (last // (num_steps + 1))).round()[::-1][:-1] + sched.steps_offset
  else:
    ts = np.arange(last, 0, -sched.num_train_timesteps / num_steps).round() - 1
  return np.ascontiguousarray(ts).astype(np.int64)


class DPMState(NamedTuple):
  """Per-step coefficient tables (length n) and the previous step's x0 prediction."""
  timesteps: jax.Array
  x0_x: jax.Array
  x0_out: jax.Array
  coef_x: jax.Array
  coef_d0: jax.Array
  coef_d1: jax.Array
  prev_x0: jax.Array


def dpm_init(sched: Schedule, num_steps: int, x: jax.Array, *, eta: float = 0.0,
             noise_keys: jax.Array | None = None) -> DPMState:
  """DPM-Solver++ tables for `num_steps` steps; `x` gives the shape of the carried x0 history."""
  del noise_keys
  if eta:
    raise SpurjaxError("the dpmpp_2m sampler is deterministic: eta must be 0")
  ts = dpm_timesteps(sched, num_steps)
  n = len(ts)
  ac32 = sched.alphas_cumprod
  sig_table = np.sqrt((1 - ac32) / ac32).astype(np.float32)
  last = 0.0 if sched.final_sigmas_type == "zero" else float(sig_table[0])
  sig = np.concatenate([sig_table[ts], [last]]).astype(np.float32).astype(np.float64)
  alpha = 1.0 / np.sqrt(sig**2 + 1.0)
  sigma = sig * alpha
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  s0, t = np.arange(n), np.arange(1, n + 1)
  h = lam[t] - lam[s0]
  em1 = np.expm1(-h)  # exp(-h) - 1, -1 when the last sigma is 0
  coef_x = sigma[t] / sigma[s0]
  coef_d0 = -alpha[t] * em1
  final_first = (sched.euler_at_final or (sched.lower_order_final and n < 15)
                 or sched.final_sigmas_type == "zero")
  second = (s0 > 0) & (sched.solver_order >= 2)
  if final_first:
    second &= s0 < n - 1
  coef_d1 = np.zeros(n)
  k = np.nonzero(second)[0]
  if len(k):
    inv_r0 = h[k] / (lam[k] - lam[k - 1])
    if sched.solver_type == "midpoint":
      coef_d1[k] = -0.5 * alpha[k + 1] * em1[k] * inv_r0
    else:
      coef_d1[k] = alpha[k + 1] * (em1[k] / h[k] + 1.0) * inv_r0
  x0_x, x0_out, _, _ = _x0_eps_coefs(sched, alpha[s0] ** 2)
  return DPMState(jnp.asarray(ts, jnp.int32), *_f32(x0_x, x0_out, coef_x, coef_d0, coef_d1),
                  jnp.zeros(x.shape, jnp.float32))


def dpm_step(sched: Schedule, state: DPMState, model_output: jax.Array, i, x: jax.Array):
  """One DPM-Solver++ update (first order at the first step and, by default, at the last)."""
  del sched
  x0 = state.x0_x[i] * x + state.x0_out[i] * model_output.astype(jnp.float32)
  x_next = state.coef_x[i] * x + state.coef_d0[i] * x0 + state.coef_d1[i] * (x0 - state.prev_x0)
  return x_next.astype(x.dtype), state._replace(prev_x0=x0)


def start_at(state, i: int):
  """A sampler state that begins at step i instead of 0 (inpainting with strength < 1): DPM-Solver++
  has no earlier x0 there, so its step i is first order, as diffusers' first step after `begin_index`."""
  if isinstance(state, DPMState) and i:
    return state._replace(coef_d1=state.coef_d1.at[i].set(0.0))
  return state


# ---------------------------------------------------------------- registry


class Sampler(NamedTuple):
  """A sampler's three pure functions."""
  timesteps: Callable[[Schedule, int], np.ndarray]
  init: Callable[..., Any]
  step: Callable[..., tuple[jax.Array, Any]]


SAMPLERS = {
    "ddim": Sampler(ddim_timesteps, ddim_init, ddim_step),
    "dpmpp_2m": Sampler(dpm_timesteps, dpm_init, dpm_step),
}


def get_sampler(name: str) -> Sampler:
  if name not in SAMPLERS:
    raise SpurjaxError(f"sampler {name!r} is unknown (use one of {', '.join(SAMPLERS)})")
  return SAMPLERS[name]


def noise_levels(sched: Schedule, timesteps) -> np.ndarray:
  """abar at each given integer timestep (float64)."""
  return sched.alphas_cumprod.astype(np.float64)[np.asarray(timesteps)]
