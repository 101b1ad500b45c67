"""Image-to-image, inpainting and morphs in the engine, against independent
references: plain generation with the same seed, the given pixels, and the
two ends of a morph (the shipped weights, a few steps each)."""
from __future__ import annotations

import numpy as np
import pytest

from engine import generation
from engine.paths import FAST_WEIGHTS, WEIGHTS
from engine.pipeline import DigitPipeline, InvalidParameter


@pytest.fixture(scope="module")
def pipes():
    return {"base": DigitPipeline.from_pretrained(WEIGHTS), "fast": DigitPipeline.from_pretrained(FAST_WEIGHTS)}


def digit(pipe, label=3, seed=0, **kw) -> np.ndarray:
    gen = generation.resolve({"m": pipe}, "m", label=label, seed=seed, **kw)
    return generation.sample(pipe, [gen])[0]


def run(pipe, **kw) -> np.ndarray:
    return generation.sample(pipe, [generation.resolve({"m": pipe}, "m", **kw)])[0]


def test_sdedit_at_strength_1_starts_where_plain_generation_does_up_to_the_sqrt_abar_x0_term(pipes):
    """x_T of image-to-image at strength 1 is sqrt(abar_T) x0 + sqrt(1 - abar_T) z where plain generation
    starts at z (the same draw of the same seed): the two differ by at most
    sqrt(abar_T) max|x0| + (1 - sqrt(1 - abar_T)) max|z| (abar_T ~ 4e-5: ~0.0064)."""
    pipe = pipes["base"]
    x0 = digit(pipe, label=7, seed=1, steps=10)
    for scheduler in ("ddpm", "ddim", "dpm"):
        sm = generation.resolve({"m": pipe}, "m", label=2, seed=5, steps=10, scheduler=scheduler, image=x0,
                                strength=1.0).sampling
        plain = pipe.start(pipe.resolve(2, 10, scheduler), 5)
        edit = pipe.start(sm, 5, x0)
        t0 = int(edit.scheduler.timesteps[edit.cursor])
        abar = float(edit.scheduler.alphas_cumprod[t0]) if hasattr(edit.scheduler, "alphas_cumprod") else None
        assert edit.cursor == 0 and sm.model_steps == 10
        if abar is not None:
            bound = np.sqrt(abar) * np.abs(x0).max() + (1 - np.sqrt(1 - abar)) * np.abs(plain.sample).max()
            assert np.abs(edit.sample - plain.sample).max() <= bound * (1 + 1e-5), scheduler
            assert bound < 0.02
        # and the run ends near the plain digit: the noise is the same, the image's trace is faint
        a = generation.sample(pipe, [generation.resolve({"m": pipe}, "m", label=2, seed=5, steps=10,
                                                        scheduler=scheduler, image=x0, strength=1.0)])[0]
        b = run(pipe, label=2, seed=5, steps=10, scheduler=scheduler)
        assert np.abs(a - b).mean() < 0.1, (scheduler, np.abs(a - b).mean())


@pytest.mark.parametrize("model, scheduler", [("base", "ddpm"), ("base", "ddim"), ("base", "dpm"),
                                              ("fast", "tcd"), ("fast", "lcm")])
def test_image_to_image_runs_the_share_of_the_schedule_strength_asks(pipes, model, scheduler):
    pipe = pipes[model]
    x0 = digit(pipes["base"], label=1, seed=3, steps=10)
    steps = 10 if model == "base" else 3
    for strength in (0.3, 0.6, 1.0):
        gen = generation.resolve({"m": pipe}, "m", label=1, seed=3, steps=steps, scheduler=scheduler, image=x0,
                                 strength=strength)
        tr = gen.trajectories(pipe)[0]
        first = int(tr.scheduler.timesteps[tr.cursor])
        if model == "base":  # diffusers' img2img: the last int(steps x strength) steps
            assert gen.sampling.model_steps == int(steps * strength)
        else:  # a consistency model: all its steps, on the first strength share of its grid
            assert gen.sampling.model_steps == steps and first <= strength * 1000
        out = generation.sample(pipe, [gen])[0]
        assert out.shape == (1, 28, 28) and np.all(np.isfinite(out))
    # a low strength keeps more of the image than a high one (another seed, another label asked)
    near = generation.sample(pipe, [generation.resolve({"m": pipe}, "m", label=7, seed=30, steps=steps,
                                                       scheduler=scheduler, image=x0, strength=0.3)])[0]
    far = generation.sample(pipe, [generation.resolve({"m": pipe}, "m", label=7, seed=30, steps=steps,
                                                      scheduler=scheduler, image=x0, strength=1.0)])[0]
    assert np.abs(near - x0).mean() < np.abs(far - x0).mean()


def test_strength_and_image_are_checked(pipes):
    pipe = pipes["base"]
    x0 = np.zeros((1, 28, 28), np.float32)
    bad = [(dict(strength=0.5), "strength"), (dict(image=x0, strength=0.0), "strength"),
           (dict(image=x0, strength=1.5), "strength"), (dict(image=x0, strength=0.01, steps=20), "strength"),
           (dict(mask=x0), "mask_image"), (dict(image=x0, mask=x0, strength=0.5), "strength"),
           (dict(jump_length=3), "jump_length")]
    for kw, field in bad:
        with pytest.raises(InvalidParameter) as e:
            generation.resolve({"m": pipe}, "m", label=1, **kw)
        assert e.value.field == field, (kw, e.value)
    assert generation.resolve({"m": pipe}, "m", label=1, image=x0).sampling.strength == generation.DEFAULT_STRENGTH


@pytest.mark.parametrize("model", ["base", "fast"])
def test_inpainting_keeps_the_given_pixels_and_an_all_black_mask_returns_the_image(pipes, model):
    pipe = pipes[model]
    x0 = digit(pipes["base"], label=8, seed=4, steps=10)
    lower = np.zeros((1, 28, 28), np.float32)
    lower[:, 14:] = 1  # the model draws the lower half
    steps = 10 if model == "base" else 3
    kw = dict(jump_length=2, jump_n_sample=2) if model == "base" else {}
    out = run(pipe, label=8, seed=9, steps=steps, image=x0, mask=lower, **kw)
    np.testing.assert_allclose(out[:, :14], np.clip(x0[:, :14], -1, 1), atol=1e-6)  # the kept half, as given
    assert np.abs(out[:, 14:] - x0[:, 14:]).mean() > 1e-3  # the other half was drawn
    keep_all = run(pipe, label=8, seed=9, steps=steps, image=x0, mask=np.zeros_like(lower), **kw)
    np.testing.assert_allclose(keep_all, np.clip(x0, -1, 1), atol=1e-6)


def test_repaint_costs_its_resampling(pipes):
    pipe = pipes["base"]
    x0 = np.zeros((1, 28, 28), np.float32)
    one = generation.resolve({"m": pipe}, "m", label=1, steps=10, image=x0, mask=x0, jump_length=1, jump_n_sample=1)
    more = generation.resolve({"m": pipe}, "m", label=1, steps=10, image=x0, mask=x0, jump_length=2, jump_n_sample=3)
    assert one.sampling.scheduler == "repaint" and one.sampling.model_steps == 10
    assert more.sampling.model_steps > one.sampling.model_steps and more.rows > one.rows
    tr = more.trajectories(pipe)[0]
    while not tr.done:
        pipe.step([tr])
    assert tr.index == more.sampling.model_steps


@pytest.mark.parametrize("model, scheduler", [("base", "dpm"), ("base", "ddpm"), ("fast", "tcd")])
def test_a_morphs_end_frames_are_the_two_plain_generations(pipes, model, scheduler):
    pipe = pipes[model]
    steps = 8 if model == "base" else 3
    plain_a = run(pipe, label=2, seed=11, steps=steps, scheduler=scheduler)
    plain_b = run(pipe, label=7, seed=12, steps=steps, scheduler=scheduler)
    frames = [generation.resolve({"m": pipe}, "m", label=2, seed=11, steps=steps, scheduler=scheduler, seed_b=12,
                                 label_b=7, alpha=a) for a in (0.0, 0.5, 1.0)]
    out = generation.sample(pipe, frames)  # one batch, the middle frame between them
    np.testing.assert_array_equal(out[0], plain_a)
    np.testing.assert_array_equal(out[2], plain_b)
    assert np.abs(out[1] - plain_a).mean() > 0 and np.abs(out[1] - plain_b).mean() > 0


def test_a_morph_frame_is_the_same_alone_or_among_the_others(pipes):
    pipe = pipes["base"]
    kw = dict(label=2, seed=11, steps=6, seed_b=12, label_b=7)
    frames = [generation.resolve({"m": pipe}, "m", alpha=a, **kw) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    together = generation.sample(pipe, frames)
    alone = generation.sample(pipe, [frames[2]])[0]
    np.testing.assert_array_equal(together[2], alone)
