"""Edit schedulers: RePaint inpainting and image-to-image strength, in parity
with diffusers (the repaint/ and img2img/ groups of fixtures/schedulers.npz,
recorded by tools/make_scheduler_fixtures.py), plus argument checks."""
from __future__ import annotations

import re

import numpy as np
import pytest

from engine.schedulers import (
    DDPMScheduler, RePaintConfig, RePaintScheduler, SchedulerOutput, check_strength, img2img_start,
)
from test_schedulers import CLASSES, DATA, assert_close, text

REPAINT_CASES = sorted(k[: -len("/config")] for k in DATA if k.startswith("repaint/") and k.endswith("/config"))
REPAINT_RUNS = [c for c in REPAINT_CASES if f"{c}/init" in DATA]
IMG2IMG_GROUPS = sorted(k[: -len("/config")] for k in DATA if k.startswith("img2img/") and k.endswith("/config"))
IMG2IMG_CASES = sorted(k[: -len("/strength")] for k in DATA if k.startswith("img2img/") and k.endswith("/strength"))
IMG2IMG_RUNS = [c for c in IMG2IMG_CASES if f"{c}/init" in DATA]
DIFFUSION = ("ddpm", "ddim", "dpm")   # get_timesteps' t_start; lcm/tcd take strength in set_timesteps
F32 = np.float32


def test_every_edit_case_is_enumerated():
    assert len(REPAINT_CASES) > 10 and len(REPAINT_RUNS) >= 8
    assert {c.split("/")[1] for c in REPAINT_RUNS} == {"linear", "squaredcos_cap_v2"}
    assert {c.split("/")[1] for c in IMG2IMG_CASES} == set(CLASSES)
    assert {c.split("/")[1] for c in IMG2IMG_RUNS} == set(DIFFUSION)
    assert any(f"{c}/error" in DATA for c in IMG2IMG_CASES)
    assert any(f"{c}/custom_timesteps" in DATA for c in IMG2IMG_CASES)
    assert all(c.rsplit("/", 1)[0] in IMG2IMG_GROUPS for c in IMG2IMG_CASES)
    # nothing under repaint/ or img2img/ lies outside a case these tests read
    prefixes = tuple(f"{c}/" for c in REPAINT_CASES + IMG2IMG_CASES) + ("repaint/default/",)
    stray = [k for k in DATA if k.startswith(("repaint/", "img2img/")) and not k.startswith(prefixes)
             and k[: -len("/config")] not in IMG2IMG_GROUPS]
    assert stray == []


# ---------------------------------------------------------------------------
# RePaint
# ---------------------------------------------------------------------------
def repaint_case(case: str) -> RePaintScheduler:
    sched = RePaintScheduler.from_config(text(f"{case}/config"))
    sched.set_timesteps(**text(f"{case}/set_timesteps"))
    return sched


def test_repaint_default_config_matches_diffusers():
    ref = text("repaint/default/config_json")
    ref.pop("_diffusers_version")
    assert RePaintScheduler().config == ref


@pytest.mark.parametrize("case", REPAINT_CASES)
def test_repaint_config_and_timesteps_match_diffusers(case):
    sched = repaint_case(case)
    ref = text(f"{case}/config")
    ref.pop("_diffusers_version", None)
    assert sched.config == ref
    expected = DATA[f"{case}/timesteps"]
    assert sched.timesteps.dtype == np.int64
    np.testing.assert_array_equal(sched.timesteps, expected)
    # is_up is RePaintPipeline's test: an entry not below the one before is an undo_step
    ups = [sched.is_up(i) for i in range(len(expected))]
    assert ups == [False] + [bool(b >= a) for a, b in zip(expected, expected[1:])]
    args = text(f"{case}/set_timesteps")
    assert RePaintScheduler.model_steps(**args) == ups.count(False)


def exact_entry(sched, i, x, model_output, noise, original, mask):
    """Entry i of the run in float64, diffusers' formulas: the drift yardstick
    (model_output is unused by an undo entry, noise its k draws)."""
    k = sched.config["num_train_timesteps"] // sched.num_inference_steps
    betas, abar = sched.betas.astype(np.float64), sched.alphas_cumprod.astype(np.float64)
    if sched.is_up(i):
        t = int(sched.timesteps[i - 1])
        for j in range(k):
            x = np.sqrt(1 - betas[t + j]) * x + np.sqrt(betas[t + j]) * noise[j]
        return x
    t = int(sched.timesteps[i])
    a, a_prev = abar[t], abar[t - k] if t >= k else 1.0
    x0 = (x - np.sqrt(1 - a) * model_output) / np.sqrt(a)
    if sched.config["clip_sample"]:
        x0 = np.clip(x0, -1, 1)
    std = sched.eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    unknown = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - std ** 2) * model_output + (std * noise if t > 0 else 0)
    known = np.sqrt(a_prev) * original + np.sqrt(1 - a_prev) * noise
    return mask * known + (1 - mask) * unknown


@pytest.mark.parametrize("mode", ["forced", "free"])
@pytest.mark.parametrize("case", REPAINT_RUNS)
def test_repaint_run_matches_diffusers(case, mode):
    """RePaintPipeline's loop, fed the noise diffusers drew, in its order:
    one per step() (drawn even where eta = 0 leaves it to the known region),
    T // n per undo_step().

    forced feeds diffusers' sample to each entry: every entry within RTOL.
    free feeds our own forward. Hundreds of entries of float32 rounding then
    add up; without clipping the unknown pixel grows to ~130 and torch's
    chain drifts 1.0e-5 of that from the float64 one (ours 2e-6). So free
    holds our chain within RTOL of the float64 chain and within twice
    assert_close's budget (two float32 chains) of diffusers'."""
    sched = repaint_case(case)
    k = sched.config["num_train_timesteps"] // sched.num_inference_steps
    original, mask = DATA[f"{case}/original"], DATA[f"{case}/mask"]
    model_outputs, noise = DATA[f"{case}/model_outputs"].astype(F32), DATA[f"{case}/noise"].astype(F32)
    prev_ref, pred_ref = DATA[f"{case}/prev_sample"], DATA[f"{case}/pred_original"]
    assert len(prev_ref) == len(sched.timesteps)
    free = mode == "free"

    x, m, d = DATA[f"{case}/init"], 0, 0
    exact = x.astype(np.float64)
    for i, t in enumerate(sched.timesteps):
        up = sched.is_up(i)
        what = f"{case} entry {i} (undo from t={sched.timesteps[i - 1]})" if up else f"{case} entry {i} (t={t})"
        scale = 2 * max(1.0, float(np.abs(prev_ref[i]).max())) if free else 1.0
        mo = model_outputs[m] if m < len(model_outputs) else None
        if up:
            draws = noise[d:d + k]
            out = sched.undo_step(x, sched.timesteps[i - 1], noise=draws)
            d += k
        else:
            draws = noise[d]
            step = sched.step(mo, t, x, original, mask, variance_noise=draws)
            assert isinstance(step, SchedulerOutput)
            x0_scale = float(np.abs(x).max() / np.sqrt(sched.alphas_cumprod[t]))
            if free:
                x0_scale = 2 * max(1.0, x0_scale, float(np.abs(pred_ref[m]).max()))
            assert_close(step.pred_original_sample, pred_ref[m], f"{what} pred_original_sample", input_scale=x0_scale)
            out = step.prev_sample
            m, d = m + 1, d + 1
        assert_close(out, prev_ref[i], f"{what} prev_sample", input_scale=scale)
        if free:
            exact = exact_entry(sched, i, exact, mo, draws.astype(np.float64), original, mask)
            assert_close(out, exact, f"{what} against float64")
        x = out if free else prev_ref[i]
    assert (m, d) == (len(model_outputs), len(noise))   # every model output and every draw consumed
    # the known pixel (mask 1) ends as the original exactly: timestep 0 steps to abar = 1
    np.testing.assert_array_equal(x[mask == 1], original[mask == 1])


def test_repaint_generator_draws_in_diffusers_order():
    """With a generator, the draws are those the recorded noise array lists:
    one for the step, then k for the undo, from the same stream."""
    sched = RePaintScheduler()
    sched.set_timesteps(10, jump_length=1, jump_n_sample=2)
    shape = (1, 1, 1, 2)
    x, mo, img, mask = (np.full(shape, v, F32) for v in (0.3, 0.1, 0.5, 1.0))
    a = sched.step(mo, 900, x, img, mask, generator=np.random.default_rng(3)).prev_sample
    z = np.random.default_rng(3).standard_normal((1 + 100, *shape), dtype=F32)
    np.testing.assert_array_equal(a, sched.step(mo, 900, x, img, mask, variance_noise=z[0]).prev_sample)
    g = np.random.default_rng(3)
    g.standard_normal(shape, dtype=F32)
    np.testing.assert_array_equal(sched.undo_step(a, 800, generator=g), sched.undo_step(a, 800, noise=z[1:]))


def test_repaint_config_refuses_a_non_epsilon_model():
    for pt in ("v_prediction", "sample"):
        with pytest.raises(ValueError, match=re.escape(f"prediction_type={pt!r}")):
            RePaintConfig.from_dict({"prediction_type": pt})
        with pytest.raises(ValueError, match="epsilon"):
            RePaintScheduler.from_config(DDPMScheduler(prediction_type=pt).config)
    # an epsilon model's config (a sibling's, with its own keys) loads, on its schedule
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2").config
    assert RePaintScheduler.from_config(ddpm).config["beta_schedule"] == "squaredcos_cap_v2"
    assert RePaintConfig.from_dict({"prediction_type": "epsilon"}, ignore_siblings=True) == RePaintConfig()


# ---------------------------------------------------------------------------
# Image-to-image strength
# ---------------------------------------------------------------------------
def img2img_case(case: str):
    """(scheduler from the group's config, the group's step count, the strength)."""
    group = case.rsplit("/", 1)[0]
    kind = case.split("/")[1]
    steps = int(re.match(r"\d+", group.split("/")[3]).group())
    strength = float(DATA[f"{case}/strength"])
    return CLASSES[kind].from_config(text(f"{group}/config")), steps, strength


@pytest.mark.parametrize("case", [c for c in IMG2IMG_CASES if c.split("/")[1] in DIFFUSION])
def test_img2img_start_matches_diffusers(case):
    sched, steps, strength = img2img_case(case)
    sched.set_timesteps(steps)
    t_start = img2img_start(steps, strength)
    assert t_start == int(DATA[f"{case}/t_start"])
    np.testing.assert_array_equal(sched.timesteps[t_start:], DATA[f"{case}/timesteps"])
    if case.split("/")[1] != "dpm":
        return
    assert t_start == int(DATA[f"{case}/begin_index"])
    x = np.zeros((1, 2), F32)
    if t_start == steps:   # nothing left to run: diffusers steps through an empty list, set_begin_index refuses
        with pytest.raises(ValueError, match="begin_index"):
            sched.set_begin_index(t_start)
        return
    sched.set_begin_index(t_start)
    if t_start > 0:   # only the first kept timestep starts the run
        with pytest.raises(ValueError, match="begin_index"):
            sched.step(x, sched.timesteps[0], x)
    sched.step(x, sched.timesteps[t_start], x)
    assert sched.step_index == t_start + 1


@pytest.mark.parametrize("mode", ["forced", "free"])
@pytest.mark.parametrize("case", IMG2IMG_RUNS)
def test_img2img_run_matches_diffusers(case, mode):
    """The pipeline's run: the image noised at the first kept timestep
    (add_noise), then every kept step, fed diffusers' noise (ddpm)."""
    sched, steps, strength = img2img_case(case)
    kind = case.split("/")[1]
    sched.set_timesteps(steps)
    t_start = img2img_start(steps, strength)
    timesteps = sched.timesteps[t_start:]
    if kind == "dpm":
        sched.set_begin_index(t_start)
    init = sched.add_noise(DATA[f"{case}/original"], DATA[f"{case}/add_noise_noise"], timesteps[:1])
    assert_close(init, DATA[f"{case}/init"], f"{case} add_noise")

    model_outputs, noise = DATA[f"{case}/model_outputs"], DATA.get(f"{case}/noise")
    prev_ref, pred_ref = DATA[f"{case}/prev_sample"], DATA[f"{case}/pred_original"]
    assert len(model_outputs) == len(timesteps)
    x = DATA[f"{case}/init"]
    for i, t in enumerate(timesteps):
        extra = {} if noise is None else {"variance_noise": noise[i]}
        out = sched.step(model_outputs[i], t, x, **extra)
        assert_close(out.prev_sample, prev_ref[i], f"{case} step {i} (t={t}) prev_sample")
        x0_scale = float(np.abs(x).max() / np.sqrt(sched.alphas_cumprod[t]))
        assert_close(out.pred_original_sample, pred_ref[i], f"{case} step {i} (t={t}) pred_original_sample",
                     input_scale=x0_scale)
        x = prev_ref[i] if mode == "forced" else out.prev_sample


@pytest.mark.parametrize("case", [c for c in IMG2IMG_CASES if c.split("/")[1] not in DIFFUSION])
def test_consistency_strength_timesteps_match_diffusers(case):
    sched, steps, strength = img2img_case(case)
    custom = DATA.get(f"{case}/custom_timesteps")
    args = {"num_inference_steps": steps} if custom is None else {"timesteps": custom.tolist()}
    if f"{case}/error" in DATA:   # diffusers: fewer grid points than steps
        assert "smaller than `num_inference_steps`" in text_of(f"{case}/error")
        with pytest.raises(ValueError, match="num_inference_steps.*strength"):
            sched.set_timesteps(**args, strength=strength)
        return
    sched.set_timesteps(**args, strength=strength)
    expected = DATA[f"{case}/timesteps"]
    assert sched.timesteps.dtype == np.int64
    np.testing.assert_array_equal(sched.timesteps, expected)
    assert sched.num_inference_steps == len(expected)
    if custom is not None:   # a hand-picked list keeps its last steps, as get_timesteps would
        assert img2img_start(len(custom), strength) == len(custom) - len(expected)


def text_of(key: str) -> str:
    return DATA[key].item().decode()


# ---------------------------------------------------------------------------
# Strength checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_bad_strength_is_rejected(strength):
    with pytest.raises(ValueError, match=re.escape("strength must be a number in (0, 1]")):
        check_strength(strength)
    with pytest.raises(ValueError, match="strength"):
        img2img_start(20, strength)
    with pytest.raises(ValueError, match="strength"):
        CLASSES["lcm"]().set_timesteps(4, strength=strength)


def test_good_strength_and_start():
    assert check_strength(1) == 1.0 and type(check_strength(np.float32(0.5))) is float
    assert img2img_start(7, 0.3) == 5   # int(7 * 0.3) = 2 steps run, Python float rounding as diffusers
    assert img2img_start(20, 1.0) == 0 and img2img_start(3, 0.3) == 3   # 3: none left to run
    for n in (0, True, 2.0):
        with pytest.raises(ValueError, match="num_inference_steps"):
            img2img_start(n, 0.5)
