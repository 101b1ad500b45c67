"""Schedulers: parity with diffusers (recorded in fixtures/schedulers.npz by
tools/make_scheduler_fixtures.py) plus behaviour and error checks."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

from engine.schedulers import (
    ETA_SAMPLERS, NOISE_SCHEDULE_KEYS, DDIMConfig, DDIMScheduler, DDPMConfig, DDPMScheduler, DPMSolverConfig,
    DPMSolverMultistepScheduler, LCMConfig, LCMScheduler, NoiseSchedule, SchedulerOutput, TCDConfig, TCDScheduler,
    make_scheduler,
)

FIXTURE = Path(__file__).parent / "fixtures" / "schedulers.npz"
with np.load(FIXTURE, allow_pickle=False) as _npz:
    DATA = {key: _npz[key] for key in _npz.files}

CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "lcm": LCMScheduler,
           "tcd": TCDScheduler}
CONFIGS = {"ddpm": DDPMConfig, "ddim": DDIMConfig, "dpm": DPMSolverConfig, "lcm": LCMConfig, "tcd": TCDConfig}
# the sampler groups only: repaint/ and img2img/ cases are tests/test_scheduler_edits.py's
CASES = sorted(k[: -len("/config")] for k in DATA if k.endswith("/config") and k.split("/")[0] in CLASSES)
RUN_CASES = [c for c in CASES if f"{c}/init" in DATA]
ADD_NOISE_CASES = sorted(k[: -len("/noisy")] for k in DATA if k.endswith("/add_noise/noisy"))
RTOL = 1e-5


def text(key: str):
    return json.loads(DATA[key].item().decode())


def from_case(case: str):
    kind = case.split("/")[0]
    return CLASSES[kind].from_config(text(f"{case}/config"))


def set_case_timesteps(sched, case: str) -> None:
    """As the recording did: the case's step count, or its hand-picked list."""
    if f"{case}/custom_timesteps" in DATA:
        sched.set_timesteps(timesteps=DATA[f"{case}/custom_timesteps"].tolist())
    else:
        sched.set_timesteps(int(case.split("/")[3]))


def assert_close(actual, expected, what: str, input_scale: float = 1.0) -> None:
    """Max error within RTOL of the array scale: the larger of the reference
    array's magnitude and the magnitude of what it was computed from
    (`input_scale`, 1 for the O(1) images and noise used here). Where terms
    cancel to a tiny result, float32 rounding of the inputs is the yardstick,
    not the tiny output."""
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, input_scale, float(np.abs(expected).max()))
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} > {RTOL} * scale {scale:.3g}"


def test_fixture_is_small_and_complete():
    assert FIXTURE.stat().st_size < 1_000_000
    kinds = {c.split("/")[0] for c in RUN_CASES}
    assert kinds == set(CLASSES)
    assert len(RUN_CASES) > 80


# ---------------------------------------------------------------------------
# Parity with diffusers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_timesteps_and_config_match_diffusers(case):
    sched = from_case(case)
    ref_config = text(f"{case}/config")
    ref_config.pop("_diffusers_version", None)
    assert sched.config == ref_config
    json.dumps(sched.config)  # JSON-serialisable

    set_case_timesteps(sched, case)
    expected = DATA[f"{case}/timesteps"]
    assert sched.timesteps.dtype == np.int64
    np.testing.assert_array_equal(sched.timesteps, expected)
    assert sched.num_inference_steps == len(expected)
    if f"{case}/sigmas" in DATA:
        assert_close(sched.sigmas, DATA[f"{case}/sigmas"], f"{case} sigmas")


def run_case(case: str, forced: bool, sched=None, set_timesteps: bool = True):
    """Step through a recorded run and compare every step with diffusers.

    forced=True feeds diffusers' prev_sample into the next step, so each step
    sees identical inputs; forced=False feeds our own prev_sample forward and
    checks that the whole chain does not drift.

    The x0 prediction (x - sigma*eps) / alpha carries the rounding error of x
    times 1/alpha (up to ~150 at t=999), so its scale is |x| / alpha."""
    sched = sched or from_case(case)
    if set_timesteps:
        set_case_timesteps(sched, case)
    kwargs = text(f"{case}/step_kwargs") if f"{case}/step_kwargs" in DATA else {}
    start = kwargs.pop("start", 0)
    model_outputs = DATA[f"{case}/model_outputs"]
    noise = DATA.get(f"{case}/noise")
    prev_ref, pred_ref = DATA[f"{case}/prev_sample"], DATA[f"{case}/pred_original"]
    timesteps = sched.timesteps[start:]
    assert len(timesteps) == len(model_outputs)

    x = DATA[f"{case}/init"]
    for i, t in enumerate(timesteps):
        extra = dict(kwargs)
        if noise is not None:
            extra["variance_noise"] = noise[i]
        out = sched.step(model_outputs[i], t, x, **extra)
        assert isinstance(out, SchedulerOutput)
        assert_close(out.prev_sample, prev_ref[i], f"{case} step {i} (t={t}) prev_sample")
        x0_scale = float(np.abs(x).max() / np.sqrt(sched.alphas_cumprod[t]))
        assert_close(out.pred_original_sample, pred_ref[i], f"{case} step {i} (t={t}) pred_original_sample",
                     input_scale=x0_scale)
        x = prev_ref[i] if forced else out.prev_sample
    return sched


@pytest.mark.parametrize("mode", ["forced", "free"])
@pytest.mark.parametrize("case", RUN_CASES)
def test_run_matches_diffusers(case, mode):
    run_case(case, forced=mode == "forced")


def test_ddpm_without_set_timesteps_is_the_1000_step_chain():
    # before set_timesteps, DDPM steps t -> t-1 over all training steps
    run_case("ddpm/linear/leading/1000/long", forced=True, set_timesteps=False)


def test_dpm_set_timesteps_resets_state():
    case = "dpm/linear/linspace/10/base"
    sched = run_case(case, forced=True)
    run_case(case, forced=True, sched=sched)  # same instance, second run from scratch


@pytest.mark.parametrize("case", ADD_NOISE_CASES)
def test_add_noise_and_velocity_match_diffusers(case):
    kind = case.split("/")[0]
    sched = make_scheduler(kind, **_schedule_config(case.split("/")[1]))
    if kind == "dpm":  # DPM noises to the sigmas of its timestep list
        sched.set_timesteps(20)
    ts = DATA[f"{case}/timesteps"].astype(np.int64)
    x0, noise = DATA[f"{case}/original"], DATA[f"{case}/noise"]
    assert_close(sched.add_noise(x0, noise, ts), DATA[f"{case}/noisy"], f"{case} add_noise")
    if f"{case}/velocity" in DATA:
        assert_close(sched.get_velocity(x0, noise, ts), DATA[f"{case}/velocity"], f"{case} get_velocity")


def _schedule_config(schedule: str) -> dict:
    return {"linear": {},
            "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
            "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"}}[schedule]


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_default_config_matches_diffusers(kind):
    ref = text(f"{kind}/default/config_json")
    ref.pop("_diffusers_version")
    assert CLASSES[kind]().config == ref
    assert make_scheduler(kind).config == ref


# ---------------------------------------------------------------------------
# DDPM's previous timestep (diffusers PR #2076)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 20])
def test_ddpm_previous_timestep_follows_the_list(spacing, steps):
    sched = DDPMScheduler(timestep_spacing=spacing)
    assert sched.previous_timestep(500) == 499  # no schedule set: t - 1
    sched.set_timesteps(steps)
    ts = sched.timesteps.tolist()
    assert [sched.previous_timestep(t) for t in ts] == ts[1:] + [-1]
    with pytest.raises(ValueError, match="not in"):
        sched.previous_timestep(ts[0] - 1)


def test_ddim_steps_back_by_T_over_n_like_diffusers():
    # diffusers' DDIM uses t - T // n whatever the spacing, so with linspace
    # and n not dividing T it does not land on the next listed timestep; the
    # parity runs (ddim/*/linspace/7, trailing/7) pin the same numbers.
    sched = DDIMScheduler(timestep_spacing="linspace")
    sched.set_timesteps(7)
    assert sched.timesteps[:2].tolist() == [999, 832]
    assert sched.previous_timestep(999) == 999 - 1000 // 7


class _PrePR2076DDPM(DDPMScheduler):
    """The old behaviour: always step t -> t - 1."""

    def previous_timestep(self, timestep):
        return int(np.asarray(timestep).reshape(())) - 1


def _sample_gaussian_data(sched, mean=0.5, std=0.1, steps=20):
    """DDPM sampling where the data is N(mean, std^2) per element and the
    model is its exact MMSE denoiser, which trusts t to tell the noise level.
    A correct sampler ends with samples distributed like the data."""
    rng = np.random.default_rng(0)
    sched.set_timesteps(steps)
    x = rng.standard_normal((4, 1, 32, 32), dtype=np.float32)
    for t in sched.timesteps:
        a = float(np.sqrt(sched.alphas_cumprod[t]))
        s = float(np.sqrt(1 - sched.alphas_cumprod[t]))
        x0_hat = mean + a * std**2 / (a * a * std**2 + s * s) * (x - a * mean)
        eps_hat = ((x - a * x0_hat) / s).astype(np.float32)
        x = sched.step(eps_hat, t, x, generator=rng).prev_sample
    return x


def test_ddpm_short_run_reaches_the_data():
    # 20 coarse ancestral steps with fixed_small variance under-disperse
    # (std ~0.05 for data std 0.1; ~0.096 with 1000 steps) but are centred
    # on the data
    x = _sample_gaussian_data(DDPMScheduler(clip_sample=False))
    assert abs(x.mean() - 0.5) < 0.01 and 0.03 < x.std() < 0.12
    # the pre-#2076 scheduler denoises by one training step per call and
    # returns mostly noise (mean ~0.06, std ~0.9): this test catches it
    x_old = _sample_gaussian_data(_PrePR2076DDPM(clip_sample=False))
    assert abs(x_old.mean() - 0.5) > 0.3 and x_old.std() > 0.5


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_oracle_model_lands_on_x0(kind, spacing):
    # model output computed from a known x0: every x0 prediction is exact
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)
    sched = make_scheduler(kind, timestep_spacing=spacing)
    sched.set_timesteps(20)
    x = rng.standard_normal(x0.shape, dtype=np.float32)
    for t in sched.timesteps:
        abar = sched.alphas_cumprod[t]
        eps = ((x - np.sqrt(abar) * x0) / np.sqrt(1 - abar)).astype(np.float32)
        x = sched.step(eps, t, x, generator=rng).prev_sample
    if kind == "tcd":  # TCD's last step lands on timestep 0, where sqrt(1 - abar_0) of eps_hat remains
        abar0 = sched.alphas_cumprod[0]
        x0 = np.sqrt(abar0) * x0 + np.sqrt(1 - abar0) * eps
    np.testing.assert_allclose(x, x0, atol=2e-3 if kind == "ddim" else 1e-4)


# ---------------------------------------------------------------------------
# Noise, arguments, dtypes
# ---------------------------------------------------------------------------
def _step(sched, t=500, shape=(2, 1, 3, 3), **kwargs):
    rng = np.random.default_rng(3)
    mo = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    return sched.step(mo, t, x, **kwargs)


def _ddpm():
    s = DDPMScheduler()
    s.set_timesteps(20)
    return s


def _ddim():
    s = DDIMScheduler()
    s.set_timesteps(20)
    return s


def _tcd():
    s = TCDScheduler()
    s.set_timesteps(2)
    return s


def test_generator_draws_standard_normal_float32():
    shape = (2, 1, 3, 3)
    expected_noise = np.random.default_rng(7).standard_normal(shape, dtype=np.float32)
    a = _step(_ddpm(), generator=np.random.default_rng(7))
    b = _step(_ddpm(), variance_noise=expected_noise)
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)
    a = _step(_ddim(), eta=0.7, generator=np.random.default_rng(7))
    b = _step(_ddim(), eta=0.7, variance_noise=expected_noise)
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)


def test_no_global_rng_and_no_draw_when_deterministic():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    _step(_ddpm())  # fresh default_rng, not np.random
    _step(_ddim(), eta=0.5)
    assert np.array_equal(np.random.get_state()[1], before)

    g = np.random.default_rng(5)
    state = g.bit_generator.state
    _step(_ddim(), generator=g)           # eta = 0
    _step(_ddpm(), t=0, generator=g)      # DDPM's last step adds no noise
    assert g.bit_generator.state == state


def test_batched_equals_alone_with_per_request_noise():
    rng = np.random.default_rng(11)
    mo, x, z = (rng.standard_normal((2, 1, 3, 3), dtype=np.float32) for _ in range(3))
    batched = _ddpm().step(mo, 500, x, variance_noise=z).prev_sample
    for i in range(2):
        alone = _ddpm().step(mo[i:i + 1], 500, x[i:i + 1], variance_noise=z[i:i + 1]).prev_sample
        np.testing.assert_array_equal(alone, batched[i:i + 1])


def test_generator_and_variance_noise_together_rejected():
    with pytest.raises(ValueError, match="generator"):
        _step(_ddpm(), generator=np.random.default_rng(0), variance_noise=np.zeros((2, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="variance_noise"):
        _step(_ddpm(), variance_noise=np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="generator"):
        _step(_ddpm(), generator=np.random.RandomState(0))


@pytest.mark.parametrize("t", [500, np.int64(500), np.array(500), np.array([500]), np.array([500.0])])
def test_timestep_forms(t):
    ref = _step(_ddim(), t=500)
    np.testing.assert_array_equal(_step(_ddim(), t=t).prev_sample, ref.prev_sample)


@pytest.mark.parametrize("t", [np.array([500, 450]), 500.5, -1, 1000, "500"])
def test_bad_timesteps(t):
    with pytest.raises(ValueError, match="timestep"):
        _step(_ddim(), t=t)


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("shape", [(5,), (1, 2, 3), (3, 2, 5, 4), (1, 1, 2, 2, 2)])
def test_any_shape_stays_float32(kind, shape):
    sched = make_scheduler(kind)
    sched.set_timesteps(10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)  # float64 in: float32 out
    for t in sched.timesteps[:3]:
        out = sched.step(rng.standard_normal(shape), t, x, generator=rng)
        assert out.prev_sample.dtype == np.float32 and out.pred_original_sample.dtype == np.float32
        assert out.prev_sample.shape == shape
        x = out.prev_sample
    assert sched.scale_model_input(x, sched.timesteps[0]).dtype == np.float32
    if kind != "dpm":
        ts = np.arange(shape[0]) * 100
        assert sched.add_noise(x, x, ts).dtype == np.float32
        assert sched.get_velocity(x, x, ts).dtype == np.float32


def test_add_noise_per_sample_timesteps_broadcast():
    s = DDPMScheduler()
    x0 = np.ones((3, 1, 2, 2), np.float32)
    z = np.zeros_like(x0)
    out = s.add_noise(x0, z, np.array([0, 500, 999]))
    np.testing.assert_allclose(out[:, 0, 0, 0], np.sqrt(s.alphas_cumprod[[0, 500, 999]]), rtol=1e-6)
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x0, z, np.array([0, 1000, 3]))


def test_dpm_add_noise_needs_listed_timesteps():
    s = DPMSolverMultistepScheduler()
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.add_noise(x, x, np.array([10]))
    s.set_timesteps(20)
    with pytest.raises(ValueError, match="not in"):
        s.add_noise(x, x, np.array([998]))


def test_schedule_tables_are_shared_and_read_only():
    a, b = DDPMScheduler(), DDIMScheduler()
    assert a.alphas_cumprod is b.alphas_cumprod
    with pytest.raises(ValueError):
        a.alphas_cumprod[0] = 0.5


def test_the_noise_schedule_keys_are_the_noise_schedule_fields():
    assert NOISE_SCHEDULE_KEYS == tuple(f.name for f in dataclasses.fields(NoiseSchedule)) == (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    for config_cls in CONFIGS.values():
        assert set(NOISE_SCHEDULE_KEYS) <= set(config_cls.defaults())


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_config_on_another_configs_schedule_gets_its_tables(kind):
    betas = np.linspace(1e-4, 0.05, 1000)   # not the default schedule, which ends at 0.02
    source = DDPMConfig(trained_betas=betas, prediction_type="v_prediction")
    cfg = CONFIGS[kind].on_schedule(source.schedule, prediction_type=source.prediction_type)
    assert cfg.schedule == source.schedule and cfg.prediction_type == "v_prediction"
    sched = CLASSES[kind](cfg)
    assert sched.alphas_cumprod is DDPMScheduler(source).alphas_cumprod   # the same cached table
    assert sched.betas[-1] == np.float32(0.05)
    assert cfg.to_dict()["trained_betas"] == betas.tolist()   # still diffusers' flat JSON keys
    assert {k: v for k, v in cfg.to_dict().items() if k not in NOISE_SCHEDULE_KEYS} == {
        k: v for k, v in CONFIGS[kind](prediction_type="v_prediction").to_dict().items()
        if k not in NOISE_SCHEDULE_KEYS}   # the rest: the class's own defaults


def test_eta_samplers_are_those_whose_step_takes_an_eta():
    takes = {name for name, cls in CLASSES.items() if "eta" in inspect.signature(cls.step).parameters}
    assert takes == set(ETA_SAMPLERS)
    for name in ETA_SAMPLERS:
        assert inspect.signature(CLASSES[name].step).parameters["eta"].default == CLASSES[name].DEFAULT_ETA


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), float("inf"), True, "0.3", None])
def test_a_bad_eta_is_rejected_by_every_step_that_takes_one(eta):
    for step in (_ddim().step, _tcd().step):
        with pytest.raises(ValueError, match=re.escape("eta must be a number in [0, 1]")):
            step(np.zeros((1, 1)), 999, np.zeros((1, 1)), eta=eta)


# ---------------------------------------------------------------------------
# Config handling and errors
# ---------------------------------------------------------------------------
def test_from_config_accepts_sibling_configs_and_ignores_private_keys():
    ddpm_cfg = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large").config
    ddim = DDIMScheduler.from_config(ddpm_cfg)  # variance_type is DDPM-only: ignored, like diffusers
    assert ddim.config["beta_schedule"] == "squaredcos_cap_v2" and "variance_type" not in ddim.config
    dpm = make_scheduler("dpm", **ddpm_cfg)
    assert dpm.config["timestep_spacing"] == "leading"  # carried over, as diffusers does
    assert DDPMScheduler.from_config({**ddpm_cfg, "_diffusers_version": "0.42.1"}).config == ddpm_cfg
    assert DDPMScheduler(_anything=1).config == DDPMScheduler().config


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_config_round_trips_through_json(kind):
    sched = make_scheduler(kind, num_train_timesteps=500, beta_schedule="scaled_linear")
    again = CLASSES[kind].from_config(json.loads(json.dumps(sched.config)))
    assert again.config == sched.config


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_defaults_come_from_the_config_dataclass(kind):
    cls, config_cls = CLASSES[kind], CONFIGS[kind]
    assert cls.config_class is config_cls
    expected = {"_class_name": cls._class_name, **dataclasses.asdict(config_cls())}
    assert cls().config == expected
    assert list(cls().config) == list(expected)  # "_class_name" first, then diffusers' order
    assert cls._fields == {k: v for k, v in expected.items() if k != "_class_name"}
    assert cls(config_cls()).config == expected


@pytest.mark.parametrize("kind,key", [(kind, key) for kind in sorted(CONFIGS) for key in CONFIGS[kind].UNSUPPORTED])
def test_unsupported_value_raises_with_its_reason(kind, key):
    config_cls = CONFIGS[kind]
    assert config_cls.defaults()[key] is False  # every unsupported key is a feature switch, off
    reason = config_cls.UNSUPPORTED[key]
    message = f"{key}=True is not supported by digitgen's {config_cls._class_name} ({reason}); only False is"
    with pytest.raises(ValueError, match=re.escape(message)):
        config_cls(**{key: True})
    with pytest.raises(ValueError, match=re.escape(message)):
        make_scheduler(kind, **{key: True})


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_dataclass_round_trips_through_json(kind):
    config_cls = CONFIGS[kind]
    betas = np.linspace(1e-4, 0.02, 50)  # numpy in: plain Python stored, a tuple so the config stays frozen
    cfg = config_cls(num_train_timesteps=50, trained_betas=betas, beta_start=np.float32(0.5), steps_offset=np.int64(1))
    assert cfg.trained_betas == tuple(betas.tolist()) and type(cfg.beta_start) is float
    assert type(cfg.steps_offset) is int
    again = config_cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg)
    assert CLASSES[kind](cfg).config == {"_class_name": config_cls._class_name, **cfg.to_dict()}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_train_timesteps = 10


def test_scheduler_takes_its_own_config_or_keywords():
    assert DDPMScheduler(DDPMConfig(clip_sample=False)).config == DDPMScheduler(clip_sample=False).config
    with pytest.raises(ValueError, match="takes a DDPMConfig, got DDIMConfig"):
        DDPMScheduler(DDIMConfig())
    with pytest.raises(ValueError, match="not both"):
        DDPMScheduler(DDPMConfig(), clip_sample=False)
    with pytest.raises(ValueError, match="unknown config key 'variance_type' for DDIMScheduler"):
        DDIMConfig.from_dict({"variance_type": "fixed_small"})  # a sibling's key: only from_config skips it
    assert DDIMConfig.from_dict({"variance_type": "fixed_small"}, ignore_siblings=True) == DDIMConfig()


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("n", [0, -1, 1001, 2.5, True, None])
def test_bad_step_counts(kind, n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_scheduler(kind).set_timesteps(n)


@pytest.mark.parametrize("kind,field,value", [
    ("ddpm", "beta_schedule", "cosine"),
    ("ddim", "beta_schedule", "sigmoid"),
    ("dpm", "beta_schedule", "laplace"),
    ("ddpm", "timestep_spacing", "uniform"),
    ("dpm", "timestep_spacing", "karras"),
    ("ddpm", "prediction_type", "flow_prediction"),
    ("ddpm", "variance_type", "learned_range"),
    ("ddpm", "variance_type", "fixed_large_log"),
    ("ddpm", "thresholding", True),
    ("ddim", "rescale_betas_zero_snr", True),
    ("ddpm", "clip_sample", "yes"),
    ("ddpm", "clip_sample_range", 0.0),
    ("ddpm", "num_train_timesteps", 0),
    ("ddpm", "num_train_timesteps", 10**9),   # a table of 1e9 floats per scheduler: refused before allocating
    ("lcm", "num_train_timesteps", 10**9),
    ("ddpm", "steps_offset", -1),
    ("ddim", "set_alpha_to_one", 1),
    ("dpm", "algorithm_type", "sde-dpmsolver++"),
    ("dpm", "solver_order", 4),
    ("dpm", "solver_type", "bh2"),
    ("dpm", "use_karras_sigmas", True),
    ("dpm", "final_sigmas_type", "max"),
    ("dpm", "variance_type", "learned"),
    ("ddpm", "trained_betas", [0.1, 0.2]),
    ("ddpm", "beta_end", 1.5),
    ("ddpm", "frobnicate", 1),
    ("dpm", "skip_prk_steps", True),
])
def test_bad_config_names_the_field(kind, field, value):
    with pytest.raises(ValueError, match=re.escape(field)):
        make_scheduler(kind, **{field: value})


def test_unknown_key_in_constructor_and_unknown_scheduler():
    with pytest.raises(ValueError, match="frobnicate"):
        DDIMScheduler(frobnicate=1)
    with pytest.raises(ValueError, match="ddim.*ddpm.*dpm"):
        make_scheduler("euler")
    with pytest.raises(ValueError, match="config"):
        DDPMScheduler.from_config(["not", "a", "dict"])


def test_steps_offset_out_of_range():
    with pytest.raises(ValueError, match="steps_offset"):
        DDPMScheduler(steps_offset=1).set_timesteps(1000)


@pytest.mark.parametrize("spacing,n", [("linspace", 1000), ("leading", 1000)])
def test_dpm_rejects_repeated_timesteps(spacing, n):
    # diffusers returns NaN (linspace) or raises IndexError (leading) here
    with pytest.raises(ValueError, match="repeats"):
        DPMSolverMultistepScheduler(timestep_spacing=spacing).set_timesteps(n)


def test_stateful_and_order_errors():
    with pytest.raises(ValueError, match="set_timesteps"):
        _step(DDIMScheduler())
    with pytest.raises(ValueError, match="set_timesteps"):
        _step(DPMSolverMultistepScheduler())
    with pytest.raises(ValueError, match="eta"):
        _step(_ddim(), eta=1.5)
    dpm = DPMSolverMultistepScheduler()
    dpm.set_timesteps(3)
    with pytest.raises(ValueError, match="not in"):
        _step(dpm, t=998)
    for t in dpm.timesteps:
        _step(dpm, t=t)
    with pytest.raises(ValueError, match="set_timesteps"):
        _step(dpm, t=dpm.timesteps[-1])
    with pytest.raises(ValueError, match="shape"):
        _ddpm().step(np.zeros((1, 2)), 500, np.zeros((2, 2)))


def test_lcm_steps_are_the_distillation_grid_and_the_last_adds_no_noise():
    lcm = LCMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True)
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 759, 499, 259]
    x = np.random.default_rng(0).standard_normal((1, 1, 2, 2)).astype(np.float32)
    for t in lcm.timesteps[:-1]:
        x = lcm.step(np.zeros_like(x), t, x, generator=np.random.default_rng(1)).prev_sample
    out = lcm.step(np.zeros_like(x), lcm.timesteps[-1], x, generator=np.random.default_rng(1))
    np.testing.assert_array_equal(out.prev_sample, out.pred_original_sample)  # the estimate itself
    with pytest.raises(ValueError, match="original_inference_steps=50"):
        lcm.set_timesteps(51)
    lcm.set_timesteps(2)
    with pytest.raises(ValueError, match="not in"):
        lcm.step(np.zeros_like(x), 500, x)


@pytest.mark.parametrize("bad, why", [
    ([999, 540], "not on the distillation grid"), ([499, 999], "strictly descending"),
    ([999, 999], "strictly descending"), ([], "non-empty"), ([999.0, 499], "list of ints"),
    ([1019, 499], "not on the distillation grid"),
])
def test_lcm_hand_picked_timesteps_are_checked(bad, why):
    lcm = LCMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True)
    with pytest.raises(ValueError, match=why):
        lcm.set_timesteps(timesteps=bad)
    with pytest.raises(ValueError, match="exactly one"):
        lcm.set_timesteps(4, timesteps=[999, 499, 299, 99])
    lcm.set_timesteps(timesteps=[999, 19])
    assert lcm.timesteps.tolist() == [999, 19] and lcm.num_inference_steps == 2


def test_tcd_eta_sets_how_much_fresh_noise_each_jump_takes():
    """eta = 0 is deterministic (the generator is never drawn from), eta > 0
    draws one noise per jump but none on the last; out of [0, 1] is an error."""
    def run(eta, rng):
        tcd = TCDScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True)
        tcd.set_timesteps(timesteps=[999, 639, 299])
        x = np.random.default_rng(0).standard_normal((1, 1, 2, 2)).astype(np.float32)
        eps = np.full_like(x, 0.5)
        for t in tcd.timesteps:
            x = tcd.step(eps, t, x, eta=eta, generator=rng).prev_sample
        return x

    untouched = np.random.default_rng(5)
    state = untouched.bit_generator.state
    deterministic = run(0.0, untouched)
    assert untouched.bit_generator.state == state
    np.testing.assert_array_equal(deterministic, run(0.0, np.random.default_rng(6)))
    drawn = np.random.default_rng(5)
    stochastic = run(0.3, drawn)
    assert not np.allclose(stochastic, deterministic)
    expected = np.random.default_rng(5)
    expected.standard_normal((2, 1, 1, 2, 2), dtype=np.float32)  # two jumps, none after the last step
    assert drawn.bit_generator.state == expected.bit_generator.state
    tcd = TCDScheduler()
    tcd.set_timesteps(2)
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta must be a number in"):
            tcd.step(np.zeros((1, 1)), tcd.timesteps[0], np.zeros((1, 1)), eta=eta)
