"""Sampling pipeline: per-request determinism, classifier-free guidance in one
batched forward, per-step frames, loading and its errors."""
import json

import numpy as np
import pytest

from engine import UNet2DModel, no_grad
from engine.io import WeightsError
from engine.pipeline import SEED_MAX, DigitPipeline, InvalidParameter, Sampling, SamplingDefaults, image_seeds
from engine.schedulers import DDPMScheduler, SchedulerConfig

TINY = dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            add_attention=False, norm_num_groups=4, num_class_embeds=11)
SCHED = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}


@pytest.fixture(scope="module")
def pipe():
    return DigitPipeline(UNet2DModel(**TINY, rng=np.random.default_rng(0)), SCHED, SamplingDefaults())


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm"])
def test_seeded_trajectory_is_the_same_alone_or_batched(pipe, scheduler):
    alone = pipe.trajectory(3, seed=42, steps=6, scheduler=scheduler, guidance_scale=2.0)
    while not alone.done:
        pipe.step([alone])
    crowd = [pipe.trajectory(l, seed=s, steps=n, scheduler=scheduler, guidance_scale=g)
             for l, s, n, g in [(1, 7, 9, 1.0), (3, 42, 6, 2.0), (9, 0, 3, 3.5), (0, 5, 12, 0.0)]]
    while not all(t.done for t in crowd):
        pipe.step(crowd)
    np.testing.assert_array_equal(crowd[1].sample, alone.sample)


def test_joining_late_does_not_change_a_trajectory(pipe):
    """Continuous batching: others join and leave between steps."""
    ref = pipe.trajectory(5, seed=1, steps=8)
    while not ref.done:
        pipe.step([ref])
    tr = pipe.trajectory(5, seed=1, steps=8)
    others = []
    for i in range(8):
        if i in (2, 5):
            others.append(pipe.trajectory(i, seed=100 + i, steps=3, scheduler="ddim"))
        pipe.step([tr, *others])
    assert tr.done
    np.testing.assert_array_equal(tr.sample, ref.sample)


def test_guidance_uses_one_batched_forward_with_null_class(pipe, monkeypatch):
    calls = []
    real = pipe.unet.forward

    def spy(x, t, labels):
        calls.append((x.shape[0], list(labels)))
        return real(x, t, labels)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    guided = pipe.trajectory(4, seed=3, steps=5, guidance_scale=3.0)
    plain = pipe.trajectory(6, seed=3, steps=5, guidance_scale=1.0)
    x_before = guided.sample.copy()
    t = guided.timestep
    pipe.step([guided, plain])
    assert calls == [(3, [4, 10, 6])]  # cond + uncond rows for the guided one, one row for the plain one

    # the guided step is uncond + s * (cond - uncond), with separate forwards for reference
    monkeypatch.setattr(pipe.unet, "forward", real)
    ref = pipe.trajectory(4, seed=3, steps=5, guidance_scale=3.0)
    np.testing.assert_array_equal(ref.sample, x_before)
    with no_grad():
        cond = pipe.unet(ref.sample, [t], [4])
        uncond = pipe.unet(ref.sample, [t], [10])
    eps = uncond + np.float32(3.0) * (cond - uncond)
    expected = ref.scheduler.step(eps, t, ref.sample).prev_sample
    np.testing.assert_allclose(guided.sample, expected, rtol=1e-5, atol=1e-6)


def test_run_yields_every_step_and_generate_returns_images(pipe):
    frames = list(pipe.run([0, 1], [10, 11], steps=7))
    assert len(frames) == 7
    assert [r.step for r in frames[-1]] == [7, 7] and all(r.done for r in frames[-1])
    assert frames[0][0].pred_original.shape == (1, 28, 28)
    assert frames[0][0].timestep > frames[-1][0].timestep
    images = pipe.generate([0, 1], [10, 11], steps=7)
    assert images.shape == (2, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1
    np.testing.assert_array_equal(images[1], np.clip(frames[-1][1].sample, -1, 1))


@pytest.mark.parametrize("args, field", [
    (dict(label=10), "label"), (dict(label=-1), "label"), (dict(label=True), "label"), (dict(label=2.0), "label"),
    (dict(label=1, scheduler="euler"), "scheduler"), (dict(label=1, scheduler="lcm"), "scheduler"),
    (dict(label=1, steps=0), "steps"), (dict(label=1, steps=1001), "steps"), (dict(label=1, steps=2.5), "steps"),
    (dict(label=1, guidance_scale=float("nan")), "guidance_scale"), (dict(label=1, guidance_scale=-1.0), "guidance_scale"),
    (dict(label=1, eta=0.3), "eta"), (dict(label=1, scheduler="ddpm", eta=0.0), "eta"),
    (dict(label=1, scheduler="ddim", eta=1.5), "eta"), (dict(label=1, scheduler="ddim", eta=-0.1), "eta"),
    (dict(label=1, scheduler="ddim", eta=True), "eta"), (dict(label=1, scheduler="ddim", eta=float("nan")), "eta"),
    (dict(label=1, scheduler="ddim", eta="0.3"), "eta"),
])
def test_resolve_names_the_field_it_rejects(pipe, args, field):
    with pytest.raises(InvalidParameter) as e:
        pipe.resolve(**args)
    assert e.value.field == field and field in str(e.value)


def test_resolve_fills_defaults_from_the_model(pipe):
    d = pipe.defaults
    assert pipe.resolve(3) == Sampling(3, d.num_inference_steps, d.scheduler, d.guidance_scale)
    assert pipe.resolve(3, steps=5, scheduler="ddim", guidance_scale=1.0).unet_rows == 1
    assert pipe.resolve(3, scheduler="ddim").eta == 0.0 and pipe.resolve(3, scheduler="ddpm").eta is None
    assert pipe.max_steps == {"ddpm": 1000, "ddim": 1000, "dpm": 999}


@pytest.mark.parametrize("bad", [{"scheduler": "euler"}, {"num_inference_steps": -3}, {"guidance_scale": -1}])
def test_invalid_defaults_in_model_index_fail_at_load(pipe, tmp_path, bad):
    pipe.save_pretrained(tmp_path / "w")
    index_path = tmp_path / "w" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["digitgen"].update(bad)
    index_path.write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="sampling default is invalid"):
        DigitPipeline.from_pretrained(tmp_path / "w")


LCM = {**SCHED, "_class_name": "LCMScheduler", "original_inference_steps": 50, "clip_sample": True}


def _student(timesteps) -> DigitPipeline:
    return DigitPipeline(UNet2DModel(**TINY, rng=np.random.default_rng(0)), LCM,
                         SamplingDefaults(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0,
                                          timesteps=timesteps))


def test_tuned_timesteps_replace_the_even_spacing_for_their_step_count_only(tmp_path):
    tuned = _student({"4": [999, 559, 279, 99]})
    even = _student(None)
    assert tuned.resolve(1).timesteps == (999, 559, 279, 99)
    assert tuned.trajectory(1, 5).scheduler.timesteps.tolist() == [999, 559, 279, 99]
    assert tuned.trajectory(1, 5, steps=2).scheduler.timesteps.tolist() == [999, 499]  # not tuned: even
    assert even.trajectory(1, 5).scheduler.timesteps.tolist() == [999, 759, 499, 259]
    # the schedule changes the image; a round trip through model_index.json keeps it
    assert not np.array_equal(tuned.generate([1], [5]), even.generate([1], [5]))
    tuned.save_pretrained(tmp_path / "w")
    loaded = DigitPipeline.from_pretrained(tmp_path / "w")
    assert loaded.defaults.timesteps == {"4": [999, 559, 279, 99]}
    np.testing.assert_array_equal(loaded.generate([1], [5]), tuned.generate([1], [5]))


@pytest.mark.parametrize("bad, why", [
    ({"4": [999, 559, 279]}, "must be a list of 4"),
    ({"3": [999, 560, 99]}, "not on the distillation grid"),
    ({"3": [99, 559, 999]}, "strictly descending"),
    ({"60": list(range(1199, 0, -20))}, "more steps than"),
    ([999, 559], "map step counts"),
])
def test_bad_tuned_timesteps_fail_at_load(bad, why):
    with pytest.raises(WeightsError, match=why):
        _student(bad)


TCD = {**LCM, "_class_name": "TCDScheduler"}


def _tcd_student(**defaults) -> DigitPipeline:
    return DigitPipeline(UNet2DModel(**TINY, rng=np.random.default_rng(0)), TCD,
                         SamplingDefaults(scheduler="tcd", num_inference_steps=3, guidance_scale=1.0, **defaults))


def test_a_tcd_student_steps_with_its_own_eta_and_keeps_lcm_beside_it(tmp_path):
    tuned, default = _tcd_student(eta=0.6), _tcd_student()
    assert tuned.samplers == ("tcd", "lcm") and tuned.resolve(1).eta == 0.6
    assert default.resolve(1).eta == 0.3   # diffusers' default
    assert tuned.resolve(1, scheduler="lcm").eta is None
    # eta changes the image; a request's own eta replaces the model's; a round trip through model_index.json keeps it
    image = tuned.generate([1], [5])
    assert not np.array_equal(image, default.generate([1], [5]))
    np.testing.assert_array_equal(tuned.generate([1], [5], eta=0.3), default.generate([1], [5]))
    tuned.save_pretrained(tmp_path / "w")
    loaded = DigitPipeline.from_pretrained(tmp_path / "w")
    assert loaded.defaults.eta == 0.6
    np.testing.assert_array_equal(loaded.generate([1], [5]), image)
    # the lcm sibling takes the whole saved config (clip_sample=True), not just the noise schedule
    lcm = tuned.trajectory(1, 5, scheduler="lcm").scheduler
    assert lcm.config["clip_sample"] is True and lcm.config["original_inference_steps"] == 50
    np.testing.assert_array_equal(tuned.generate([1], [5], scheduler="lcm"), _student(None).generate([1], [5], steps=3))


@pytest.mark.parametrize("eta", [-0.1, 1.5, "0.3", True])
def test_a_bad_eta_in_model_index_fails_at_load(eta):
    with pytest.raises(WeightsError, match="eta must be a number in"):
        _tcd_student(eta=eta)


def test_a_scheduler_without_hand_picked_timesteps_refuses_them(pipe):
    with pytest.raises(WeightsError, match="takes no hand-picked timesteps"):
        DigitPipeline(pipe.unet, SCHED, SamplingDefaults(timesteps={"20": list(range(999, 0, -50))}))


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "w")
    loaded = DigitPipeline.from_pretrained(tmp_path / "w")
    assert loaded.defaults == pipe.defaults
    a = pipe.generate([2], [9], steps=4)
    b = loaded.generate([2], [9], steps=4)
    np.testing.assert_array_equal(a, b)


def test_load_errors_say_what_is_wrong(pipe, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        DigitPipeline.from_pretrained(tmp_path / "nothing")
    pipe.save_pretrained(tmp_path / "w")
    weights = tmp_path / "w" / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        DigitPipeline.from_pretrained(tmp_path / "w")
    weights.write_bytes(good)
    cfg_path = tmp_path / "w" / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["block_out_channels"] = [8, 32]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="do not match"):
        DigitPipeline.from_pretrained(tmp_path / "w")
    cfg_path.write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        DigitPipeline.from_pretrained(tmp_path / "w")


def test_ddim_steps_with_the_noise_implied_by_the_clipped_estimate(pipe, monkeypatch):
    tr = pipe.trajectory(2, seed=8, steps=4, scheduler="ddim")
    seen = {}
    real = tr.scheduler.step

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tr.scheduler, "step", spy)
    pipe.step([tr])
    assert seen.get("use_clipped_model_output") is True


# -- one noise schedule for every sampler of a model ------------------------------------
BETAS_TO_005 = np.linspace(1e-4, 0.05, 1000).tolist()   # not the default schedule, which ends at 0.02


@pytest.mark.parametrize("config, defaults", [
    (SCHED, SamplingDefaults()),
    (TCD, SamplingDefaults(scheduler="tcd", num_inference_steps=3, guidance_scale=1.0)),
], ids=["diffusion", "consistency"])
def test_every_sampler_of_a_model_uses_its_trained_betas(config, defaults):
    unet = UNet2DModel(**TINY, rng=np.random.default_rng(0))
    trained = DigitPipeline(unet, {**config, "trained_betas": BETAS_TO_005}, defaults)
    plain = DigitPipeline(unet, config, defaults)
    expected = DDPMScheduler(trained_betas=BETAS_TO_005).alphas_cumprod
    assert len(trained.samplers) == (3 if config is SCHED else 2)
    for name in trained.samplers:
        sched = trained.trajectory(1, 5, steps=3, scheduler=name).scheduler
        assert sched.betas[-1] == np.float32(0.05), name
        np.testing.assert_array_equal(sched.alphas_cumprod, expected, err_msg=name)
        assert not np.array_equal(trained.generate([1], [5], steps=3, scheduler=name),
                                  plain.generate([1], [5], steps=3, scheduler=name)), name


def test_a_model_is_checked_once_per_sampler_at_load_and_never_per_trajectory(monkeypatch):
    checked = []
    real = SchedulerConfig.__post_init__

    def counting(self):
        checked.append(type(self).__name__)
        real(self)

    monkeypatch.setattr(SchedulerConfig, "__post_init__", counting)
    unet = UNet2DModel(**TINY, rng=np.random.default_rng(0))
    diffusion = DigitPipeline(unet, SCHED, SamplingDefaults())
    student = DigitPipeline(unet, TCD, SamplingDefaults(scheduler="tcd", num_inference_steps=3, guidance_scale=1.0,
                                                        timesteps={"2": [999, 299]}))
    # (a diffusion model's inpainting sampler, repaint, is checked at load too)
    assert sorted(checked) == ["DDIMConfig", "DDPMConfig", "DPMSolverConfig", "LCMConfig", "RePaintConfig",
                               "TCDConfig"]
    checked.clear()
    trajectories = [p.start(p.resolve(1, steps=2, scheduler=name), seed=3)
                    for p in (diffusion, student) for name in p.samplers]
    trajectories.append(student.trajectory(1, 3, timesteps=[999, 499]))
    diffusion.step(trajectories[:3])
    student.step(trajectories[3:])
    assert checked == []


# -- eta per request ---------------------------------------------------------------------
def test_tcd_trajectories_with_different_etas_share_a_step_and_each_is_as_alone():
    student = _tcd_student()

    def alone(eta):
        tr = student.trajectory(1, 5, eta=eta)
        while not tr.done:
            student.step([tr])
        return tr.sample

    together = [student.trajectory(1, 5, eta=0.0), student.trajectory(1, 5, eta=0.6)]
    while not all(t.done for t in together):
        student.step(together)
    np.testing.assert_array_equal(together[0].sample, alone(0.0))
    np.testing.assert_array_equal(together[1].sample, alone(0.6))
    assert not np.array_equal(together[0].sample, together[1].sample)


def test_ddim_with_an_eta_draws_fresh_noise_from_its_generator(pipe):
    def run(eta):
        tr = pipe.trajectory(2, seed=8, steps=4, scheduler="ddim", eta=eta)
        after_x_T = tr.generator.bit_generator.state
        while not tr.done:
            pipe.step([tr])
        return tr.sample, tr.generator.bit_generator.state != after_x_T

    deterministic, drew = run(0.0)
    assert not drew
    np.testing.assert_array_equal(run(None)[0], deterministic)   # ddim's default eta is 0
    stochastic, drew = run(0.5)
    assert drew and not np.array_equal(stochastic, deterministic)


@pytest.mark.parametrize("model, scheduler", [("diffusion", "ddpm"), ("diffusion", "dpm"), ("student", "lcm")])
def test_eta_for_a_sampler_without_one_names_the_samplers_that_take_it(pipe, model, scheduler):
    p = pipe if model == "diffusion" else _tcd_student()
    with pytest.raises(InvalidParameter) as e:
        p.resolve(1, scheduler=scheduler, eta=0.3)
    assert e.value.field == "eta"
    assert "ddim" in str(e.value) and "tcd" in str(e.value) and scheduler in str(e.value)


def test_image_i_of_a_request_uses_seed_plus_i_wrapped_to_32_bits():
    assert SEED_MAX == 2**32 - 1
    assert image_seeds(7, 3) == [7, 8, 9]
    assert image_seeds(SEED_MAX - 1, 3) == [SEED_MAX - 1, SEED_MAX, 0]
    assert image_seeds(0, 0) == []
