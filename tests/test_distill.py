"""The consistency distiller on a tiny teacher: its teacher step is the
(parity-tested) DDIM step, the loss's gradients match finite differences
through the whole student, a resumed run ends with exactly the weights of an
uninterrupted one, and the exported student samples with TCD (LCM beside it) only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import make_tiny_weights, write_bar_digits
from engine.training.distill import DistillConfig, Distiller, main
from engine.pipeline import DigitPipeline, InvalidParameter
from engine.io import WeightsError
from engine.schedulers import DDIMScheduler


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    make_tiny_weights(d / "teacher")
    write_bar_digits(d / "mnist.npz")
    return d


def args(d: Path, out: Path, *extra) -> list[str]:
    return ["--data", str(d / "mnist.npz"), "--teacher", str(d / "teacher"), "--out", str(out),
            "--batch-size", "8", "--warmup", "2", "--lr", "1e-3", "--sample-seeds", "0", "--log-every", "1",
            "--no-progress", *extra]


def batch(distiller, B=3, seed=1):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (B, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, B)
    n = rng.integers(0, len(distiller.grid), B)
    t, s = distiller.grid[n], distiller.grid_prev[n]
    x_t = distiller.scheduler.add_noise(x0, rng.standard_normal(x0.shape).astype(np.float32), t)
    return x_t, t, s, y


def test_teacher_step_is_a_guided_ddim_step(setup):
    distiller = Distiller(DistillConfig(data="", teacher=str(setup / "teacher")))
    x_t, _, _, y = batch(distiller)
    t, s = np.full(3, 539), np.full(3, 519)   # neighbours on the 50-point grid
    got = distiller.teacher_step(x_t, t, s, y)
    eps = distiller.teacher(np.concatenate([x_t, x_t]), np.concatenate([t, t]), np.concatenate([y, [10] * 3]))
    eps_w = eps[3:] + np.float32(distiller.guidance) * (eps[:3] - eps[3:])
    ddim = DDIMScheduler(clip_sample=False)
    ddim.set_timesteps(50)
    want = ddim.step(eps_w, 539, x_t).prev_sample
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_target_at_the_data_end_is_the_teacher_step(setup):
    """f(x, 0) = x: on the lowest grid point the target is x_s itself."""
    distiller = Distiller(DistillConfig(data="", teacher=str(setup / "teacher")))
    x_t, _, _, y = batch(distiller)
    t, s = np.full(3, distiller.grid[0]), np.zeros(3, np.int64)
    np.testing.assert_array_equal(distiller.targets(x_t, t, s, y), distiller.teacher_step(x_t, t, s, y))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_gradients_match_finite_differences(setup, prediction_type):
    distiller = Distiller(DistillConfig(data="", teacher=str(setup / "teacher"), prediction_type=prediction_type))
    x_t, t, s, y = batch(distiller, B=4)
    target = distiller.targets(x_t, t, s, y).astype(np.float64)
    model = distiller.model.to(np.float64)
    x_t = x_t.astype(np.float64)

    def loss():
        return distiller.consistency_loss(model(x_t, t, y), x_t, t, target)[0]

    model.zero_grad()
    value, d_eps = distiller.consistency_loss(model(x_t, t, y), x_t, t, target)
    assert value > 0 and d_eps.dtype == np.float64
    model.backward(d_eps)
    rng = np.random.default_rng(0)
    checked = 0
    for name, p in model.named_parameters():
        for _ in range(2):
            i = tuple(rng.integers(0, n) for n in p.data.shape)
            old = p.data[i]
            p.data[i] = old + 1e-6
            up = loss()
            p.data[i] = old - 1e-6
            down = loss()
            p.data[i] = old
            numeric = (up - down) / 2e-6
            assert abs(numeric - p.grad[i]) <= 1e-5 * max(1e-3, abs(numeric)) + 1e-9, (name, i, numeric, p.grad[i])
            checked += 1
    assert checked > 50


def test_loss_weight_caps_high_noise_gradients(setup):
    """lambda(t) = min(1, sqrt(SNR)): d loss / d eps has the same bound at t = 999 as at t = 19."""
    distiller = Distiller(DistillConfig(data="", teacher=str(setup / "teacher")))
    rng = np.random.default_rng(0)
    for t in (19, 999):
        x_t = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
        eps = rng.standard_normal(x_t.shape).astype(np.float32)
        _, d_eps = distiller.consistency_loss(eps, x_t, np.array([t]), np.zeros_like(x_t))
        assert np.linalg.norm(d_eps) <= 1.0 + 1e-5


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_a_one_step_student_has_no_high_noise_amplification(setup, prediction_type):
    """Its x0 estimate at t = 999 moves by at most its output's change (an
    epsilon student's by 1/sqrt(abar_999), about 150 times)."""
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    out, bump = rng.standard_normal(x_t.shape).astype(np.float32), np.full(x_t.shape, 1e-3, np.float32)
    moved = {}
    for kind in ("epsilon", prediction_type):
        d = Distiller(DistillConfig(data="", teacher=str(setup / "teacher"), prediction_type=kind))
        t = np.array([999])
        moved[kind] = np.abs(d.x0_hat(out + bump, x_t, t)[0] - d.x0_hat(out, x_t, t)[0]).max()
    assert moved[prediction_type] <= 1e-3 * 1.0001
    assert moved["epsilon"] > 100 * 1e-3


def test_the_target_of_a_v_student_is_its_x0_estimate(setup):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0, so a target network that outputs
    the v of a known (x0, eps) gives back x0 (up to the boundary scalings)."""
    d = Distiller(DistillConfig(data="", teacher=str(setup / "teacher"), prediction_type="v_prediction"))
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([499, 999])
    x_t = d.scheduler.add_noise(x0, eps, t)
    v = d.scheduler.get_velocity(x0, eps, t)
    np.testing.assert_allclose(d.x0_hat(v, x_t, t)[0], x0, atol=2e-5)


def test_the_student_options_are_checked(setup):
    with pytest.raises(WeightsError, match="prediction_type must be one of"):
        Distiller(DistillConfig(data="", teacher=str(setup / "teacher"), prediction_type="x0"))
    with pytest.raises(WeightsError, match="sampler must be one of"):
        Distiller(DistillConfig(data="", teacher=str(setup / "teacher"), sampler="ddim"))


def checkpoint(out: Path) -> dict:
    return load_file(str(out / "checkpoint.safetensors"))


def test_resume_equals_uninterrupted(setup, tmp_path):
    assert main(args(setup, tmp_path / "full", "--steps", "6")) == 0
    assert main(args(setup, tmp_path / "split", "--steps", "6", "--stop-after", "3")) == 0
    assert main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    a, b = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("target/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))


def test_student_is_a_consistency_model_that_samples_in_few_steps(setup, tmp_path):
    assert main(args(setup, tmp_path / "run", "--steps", "2", "--sample-seeds", "1")) == 0
    folder = tmp_path / "run" / "pipeline"
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "TCDScheduler" and sched["beta_schedule"] == "linear"
    pipe = DigitPipeline.from_pretrained(folder)
    assert pipe.samplers == ("tcd", "lcm")
    assert (pipe.defaults.scheduler, pipe.defaults.guidance_scale) == ("tcd", 1.0)
    for steps in (1, 2, 4, 8):
        images = pipe.generate([3, 4], [0, 1], steps=steps)
        assert images.shape == (2, 1, 28, 28) and np.all(np.abs(images) <= 1)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        pipe.trajectory(3, 0, scheduler="dpm")
    with pytest.raises(InvalidParameter, match="steps must be an integer 1-50 with scheduler tcd"):
        pipe.trajectory(3, 0, steps=51)
    images = pipe.generate([3, 4], [0, 1], steps=4, scheduler="lcm")   # the sibling sampler, same grid
    assert images.shape == (2, 1, 28, 28) and np.all(np.abs(images) <= 1)
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()


def test_a_one_step_v_student_exports_for_lcm_at_one_step(setup, tmp_path):
    assert main(args(setup, tmp_path / "run", "--steps", "2", "--prediction-type", "v_prediction",
                     "--sampler", "lcm", "--sample-steps", "1", "--sample-seeds", "1")) == 0
    folder = tmp_path / "run" / "pipeline"
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["prediction_type"]) == ("LCMScheduler", "v_prediction")
    pipe = DigitPipeline.from_pretrained(folder)
    assert (pipe.defaults.scheduler, pipe.defaults.num_inference_steps) == ("lcm", 1)
    images = pipe.generate([3, 4], [0, 1])
    assert images.shape == (2, 1, 28, 28) and np.all(np.abs(images) <= 1)


def test_resume_of_a_training_checkpoint_is_refused(setup, tmp_path, capsys):
    from engine.training.train import main as train_main
    tiny = setup / "tiny.json"
    tiny.write_text((setup / "teacher" / "unet" / "config.json").read_text())
    assert train_main(["--data", str(setup / "mnist.npz"), "--model-config", str(tiny), "--out", str(tmp_path),
                       "--steps", "1", "--batch-size", "4", "--sample-seeds", "0", "--no-progress"]) == 0
    assert main(["--resume", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "not a distillation checkpoint" in capsys.readouterr().err


def test_a_second_run_starts_from_the_first_student(setup, tmp_path, capsys):
    assert main(args(setup, tmp_path / "first", "--steps", "2")) == 0
    first = DigitPipeline.from_pretrained(tmp_path / "first" / "pipeline").unet.state_dict()
    second = Distiller(DistillConfig(data="", teacher=str(setup / "teacher"),
                                     init=str(tmp_path / "first" / "pipeline")))
    teacher = DigitPipeline.from_pretrained(setup / "teacher").unet.state_dict()
    assert any(not np.array_equal(first[k], teacher[k]) for k in first)   # the first run moved the weights
    for state in (second.model.state_dict(), second.ema.state_dict(), second.target.state_dict()):
        for k in first:
            np.testing.assert_array_equal(state[k], first[k], err_msg=k)
    # a diffusion model is a teacher, not a student to continue
    assert main(args(setup, tmp_path / "bad", "--steps", "1", "--init", str(setup / "teacher"))) == 2
    assert "not a consistency student" in capsys.readouterr().err


def test_a_resumed_run_does_not_need_its_init_folder(setup, tmp_path):
    """The checkpoint holds the weights: moving --init's folder away after
    the start (a candidate renamed, a run dir cleaned) must not strand the run."""
    import shutil
    assert main(args(setup, tmp_path / "first", "--steps", "2")) == 0
    init = tmp_path / "init"
    shutil.copytree(tmp_path / "first" / "pipeline", init)
    assert main(args(setup, tmp_path / "full", "--steps", "4", "--init", str(init))) == 0
    assert main(args(setup, tmp_path / "split", "--steps", "4", "--stop-after", "2", "--init", str(init))) == 0
    shutil.rmtree(init)
    assert main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    a, b = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- the one-step student (engine/training/onestep.py) ----------------------------------
def onestep_args(d: Path, out: Path, *extra) -> list[str]:
    return ["--teacher", str(d / "teacher"), "--out", str(out), "--pairs", "70", "--batch-size", "8",
            "--warmup", "2", "--lr", "1e-3", "--sample-seeds", "0", "--log-every", "1", "--no-progress", *extra]


def test_onestep_pairs_are_the_teachers_own_samples_and_resume_by_chunk(setup, tmp_path):
    from engine.training.onestep import CHUNK, PAIR_SEEDS, load_pairs, make_pairs, start_noise
    teacher = DigitPipeline.from_pretrained(setup / "teacher")
    make_pairs(teacher, tmp_path, 70, log=lambda m: None)
    first = (tmp_path / "pairs" / "chunk_00000.safetensors").stat().st_mtime_ns
    make_pairs(teacher, tmp_path, 70, log=lambda m: None)        # nothing to redo
    assert (tmp_path / "pairs" / "chunk_00000.safetensors").stat().st_mtime_ns == first
    seeds, labels, x0 = load_pairs(tmp_path, 70)
    assert len(seeds) == 70 and -(-70 // CHUNK) == 2 and seeds[0] == PAIR_SEEDS and labels[13] == 3
    np.testing.assert_array_equal(x0[13], teacher.generate([3], [PAIR_SEEDS + 13])[0])
    # the student sees the very noise the teacher started from
    np.testing.assert_array_equal(start_noise(seeds[:2], (1, 28, 28))[1], teacher.trajectory(1, int(seeds[1])).sample[0])


def test_onestep_student_resumes_exactly_and_exports_for_one_lcm_step(setup, tmp_path):
    from engine.training.onestep import main as onestep_main
    assert onestep_main(onestep_args(setup, tmp_path / "full", "--steps", "4")) == 0
    assert onestep_main(onestep_args(setup, tmp_path / "split", "--steps", "4", "--stop-after", "2")) == 0
    assert onestep_main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    a, b = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    folder = tmp_path / "full" / "pipeline"
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["prediction_type"]) == ("LCMScheduler", "v_prediction")
    pipe = DigitPipeline.from_pretrained(folder)
    assert (pipe.defaults.scheduler, pipe.defaults.num_inference_steps, pipe.samplers) == ("lcm", 1, ("lcm", "tcd"))
    images = pipe.generate([3, 4], [0, 1])
    assert images.shape == (2, 1, 28, 28) and np.all(np.abs(images) <= 1)


def test_onestep_refuses_an_epsilon_student(setup, tmp_path, capsys):
    from engine.training.onestep import main as onestep_main
    assert onestep_main(onestep_args(setup, tmp_path, "--prediction-type", "epsilon")) == 2
    assert "needs prediction_type v_prediction or sample" in capsys.readouterr().err
