"""Schedules and samplers against diffusers' PyTorch schedulers (when installed)."""
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax.diffusion import schedulers as S
from spurjax.errors import SpurjaxError

SCHEDULES = {
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}
PREDICTIONS = ("epsilon", "v_prediction")


def _config(schedule, prediction, **extra):
  return dict(num_train_timesteps=1000, prediction_type=prediction, **SCHEDULES[schedule], **extra)


def _outputs(n, shape=(2, 3, 4, 4), seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape).astype(np.float32), rng.standard_normal((n,) + shape).astype(np.float32)


def _nhwc(a):
  return jnp.asarray(np.moveaxis(a, 1, -1))


def _nchw(a):
  return np.moveaxis(np.asarray(a), -1, 1)


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dsched():
  return pytest.importorskip("diffusers.schedulers")


def test_make_schedule_defaults_and_unknown_keys_ignored():
  cfg = {"_class_name": "PNDMScheduler", "skip_prk_steps": True, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1, "set_alpha_to_one": False,
         "clip_sample": False, "trained_betas": None}
  s = S.make_schedule(cfg)
  assert s.steps_offset == 1 and s.timestep_spacing == "leading" and not s.set_alpha_to_one
  assert s.alphas_cumprod.shape == (1000,) and s.alphas_cumprod.dtype == np.float32
  assert hash(s) == hash(S.make_schedule(cfg))


@pytest.mark.parametrize("key,value", [
    ("beta_schedule", "sigmoid"), ("prediction_type", "flow"), ("timestep_spacing", "karras"),
    ("thresholding", True), ("use_karras_sigmas", True), ("algorithm_type", "sde-dpmsolver++"),
    ("num_train_timesteps", "ten"), ("solver_order", 3), ("variance_type", "learned_range"),
])
def test_make_schedule_rejects_unsupported(key, value):
  with pytest.raises(SpurjaxError, match=key):
    S.make_schedule({key: value})


def test_load_schedule_bad_file(tmp_path):
  bad = tmp_path / "scheduler_config.json"
  bad.write_text("[1, 2]")
  with pytest.raises(SpurjaxError, match="scheduler_config.json"):
    S.load_schedule(str(bad))
  bad.write_text(json.dumps({"beta_schedule": "cosine"}))
  with pytest.raises(SpurjaxError, match="beta_schedule"):
    S.load_schedule(str(bad))
  with pytest.raises(SpurjaxError, match="missing.json"):
    S.load_schedule(str(tmp_path / "missing.json"))


def test_bad_step_count_and_sampler():
  s = S.make_schedule({})
  with pytest.raises(SpurjaxError, match="num_steps"):
    S.ddim_timesteps(s, 0)
  with pytest.raises(SpurjaxError, match="sampler"):
    S.get_sampler("euler_a")


@pytest.mark.parametrize("schedule,prediction", itertools.product(
    list(SCHEDULES) + ["squaredcos_cap_v2"], PREDICTIONS))
def test_add_noise_and_target_match_diffusers(torch, dsched, schedule, prediction):
  cfg = _config(schedule, prediction) if schedule in SCHEDULES else dict(
      beta_schedule=schedule, prediction_type=prediction)
  ref = dsched.DDPMScheduler(**cfg)
  s = S.make_schedule(cfg)
  np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-7)
  x0, noise = _outputs(2)
  noise = noise[0]
  t = np.array([0, 999], np.int64)
  want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
  got = S.add_noise(s, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  np.testing.assert_allclose(got, want, atol=1e-5)
  target = S.training_target(s, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  if prediction == "epsilon":
    want_target = noise
  else:
    want_target = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
  np.testing.assert_allclose(target, want_target, atol=1e-5)


def _run_reference(torch, ref, x, outputs, **step_kw):
  xs, sample = [], torch.from_numpy(x)
  for t, out in zip(ref.timesteps, outputs):
    sample = ref.step(torch.from_numpy(out), t, sample, **step_kw).prev_sample
    xs.append(sample.numpy())
  return xs


def _run_ours(sched, sampler, n, x, outputs, jit=False, **init_kw):
  smp = S.get_sampler(sampler)
  x = _nhwc(x)
  state = smp.init(sched, n, x, **init_kw)
  step = jax.jit(smp.step, static_argnums=0) if jit else smp.step
  xs = []
  for i in range(n):
    x, state = step(sched, state, _nhwc(outputs[i]), jnp.int32(i) if jit else i, x)
    xs.append(_nchw(x))
  return xs


def _assert_trajectories_close(got, want, tol=1e-5):
  assert len(got) == len(want)
  for i, (g, w) in enumerate(zip(got, want)):
    scale = max(1.0, float(np.abs(w).max()))
    np.testing.assert_allclose(g, w, atol=tol * scale, err_msg=f"step {i}")


@pytest.mark.parametrize("schedule,prediction,spacing", [
    ("linear", "epsilon", "leading"), ("linear", "v_prediction", "trailing"),
    ("scaled_linear", "epsilon", "linspace"), ("scaled_linear", "v_prediction", "leading"),
])
def test_ddim_matches_diffusers(torch, dsched, schedule, prediction, spacing):
  cfg = _config(schedule, prediction, timestep_spacing=spacing, steps_offset=1, set_alpha_to_one=False,
                clip_sample=False)
  n = 6
  ref = dsched.DDIMScheduler(**cfg)
  ref.set_timesteps(n)
  s = S.make_schedule(cfg)
  np.testing.assert_array_equal(S.ddim_timesteps(s, n), ref.timesteps.numpy())
  x, outs = _outputs(n)
  _assert_trajectories_close(_run_ours(s, "ddim", n, x, outs, jit=prediction == "epsilon"),
                             _run_reference(torch, ref, x, outs))


def test_ddim_clip_and_eta_match_diffusers(torch, dsched):
  cfg = _config("linear", "epsilon", clip_sample=True, set_alpha_to_one=True)
  n = 5
  ref = dsched.DDIMScheduler(**cfg)
  ref.set_timesteps(n)
  s = S.make_schedule(cfg)
  x, outs = _outputs(n, seed=3)
  keys = jax.random.split(jax.random.key(7), x.shape[0])
  noises = [np.array(_nchw(S.ddim_noise(keys, i, (4, 4, 3)))) for i in range(n)]
  xs, sample = [], torch.from_numpy(x)
  for i, t in enumerate(ref.timesteps):
    sample = ref.step(torch.from_numpy(outs[i]), t, sample, eta=0.7,
                      variance_noise=torch.from_numpy(noises[i])).prev_sample
    xs.append(sample.numpy())
  _assert_trajectories_close(_run_ours(s, "ddim", n, x, outs, eta=0.7, noise_keys=keys), xs)


@pytest.mark.parametrize("schedule,prediction,n,extra", [
    ("linear", "epsilon", 7, {"timestep_spacing": "linspace"}),
    ("linear", "v_prediction", 16, {"timestep_spacing": "leading", "steps_offset": 1}),
    ("scaled_linear", "epsilon", 20, {"timestep_spacing": "trailing", "solver_type": "heun"}),
    ("scaled_linear", "v_prediction", 8, {"final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"}),
])
def test_dpmpp_2m_matches_diffusers(torch, dsched, schedule, prediction, n, extra):
  cfg = _config(schedule, prediction, **extra)
  ref = dsched.DPMSolverMultistepScheduler(**cfg)
  ref.set_timesteps(n)
  s = S.make_schedule(cfg)
  np.testing.assert_array_equal(S.dpm_timesteps(s, n), ref.timesteps.numpy())
  x, outs = _outputs(n, seed=n)
  _assert_trajectories_close(_run_ours(s, "dpmpp_2m", n, x, outs, jit=n == 7), _run_reference(torch, ref, x, outs))


def test_dpmpp_2m_from_a_later_step_matches_diffusers(torch, dsched):
  cfg = _config("scaled_linear", "v_prediction", timestep_spacing="trailing")
  n, start = 16, 4
  ref = dsched.DPMSolverMultistepScheduler(**cfg)
  ref.set_timesteps(n)
  ref.set_begin_index(start)   # as diffusers' inpainting pipeline does for strength < 1
  s = S.make_schedule(cfg)
  x, outs = _outputs(n - start, seed=2)
  smp = S.get_sampler("dpmpp_2m")
  xj = _nhwc(x)
  state = S.start_at(smp.init(s, n, xj), start)
  got = []
  for k in range(n - start):
    xj, state = smp.step(s, state, _nhwc(outs[k]), start + k, xj)
    got.append(_nchw(xj))
  want, sample = [], torch.from_numpy(x)
  for t, out in zip(ref.timesteps[start:], outs):
    sample = ref.step(torch.from_numpy(out), t, sample).prev_sample
    want.append(sample.numpy())
  _assert_trajectories_close(got, want)
  # Without start_at the first step would be second order against a zero history.
  plain = smp.step(s, smp.init(s, n, _nhwc(x)), _nhwc(outs[0]), start, _nhwc(x))[0]
  assert np.abs(_nchw(plain) - got[0]).max() > 1e-3


def test_steps_work_inside_scan():
  s = S.make_schedule(_config("scaled_linear", "epsilon"))
  x, outs = _outputs(5, shape=(1, 4, 2, 2))
  for name in S.SAMPLERS:
    smp = S.get_sampler(name)
    xj, oj = _nhwc(x), jnp.stack([_nhwc(o) for o in outs])

    def run(xj, oj, smp=smp):
      def body(carry, i):
        x, state = carry
        return smp.step(s, state, oj[i], i, x), None
      (x_end, _), _ = jax.lax.scan(body, (xj, smp.init(s, 5, xj)), jnp.arange(5))
      return x_end

    want = _run_ours(s, name, 5, x, outs)[-1]
    np.testing.assert_allclose(_nchw(jax.jit(run)(xj, oj)), want, atol=1e-5)
