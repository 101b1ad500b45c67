"""The trainer: loss falls on a small synthetic set, resume after an
interrupt (--stop-after, and a real SIGTERM) ends with exactly the weights of
an uninterrupted run, bad data fails at once with a clear message."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import write_bar_digits
from engine.training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"], "add_attention": False, "norm_num_groups": 4,
        "num_class_embeds": 11}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_bar_digits(d / "mnist.npz")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return d


def args(data, out, *extra):
    return ["--data", str(data / "mnist.npz"), "--model-config", str(data / "tiny.json"), "--out", str(out),
            "--batch-size", "16", "--lr", "2e-3", "--warmup", "5", "--sample-seeds", "0", "--log-every", "1",
            "--no-progress", *extra]


def log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_are_written(data, tmp_path):
    assert main(args(data, tmp_path / "run", "--steps", "80", "--sample-seeds", "1")) == 0
    losses = [r["loss"] for r in log(tmp_path / "run")]
    assert len(losses) == 80
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)
    run = tmp_path / "run"
    assert (run / "checkpoint.safetensors").is_file()
    assert (run / "samples" / "step_0000080.png").is_file()
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json"):
        assert (run / "pipeline" / name).is_file(), name
    rec = log(run)[-1]
    assert {"step", "loss", "lr", "img_per_s", "grad_norm"} <= rec.keys()


def checkpoint(out):
    return load_file(str(Path(out) / "checkpoint.safetensors"))


def assert_same_checkpoint(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_equals_uninterrupted(data, tmp_path):
    assert main(args(data, tmp_path / "full", "--steps", "8")) == 0
    assert main(args(data, tmp_path / "split", "--steps", "8", "--stop-after", "3")) == 0
    assert int(checkpoint(tmp_path / "split")["step"].reshape(-1)[0]) == 3
    assert main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    assert_same_checkpoint(checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split"))


def test_sigterm_checkpoints_and_resume_is_exact(data, tmp_path):
    """A real signal to a real training process, then --resume. The run is
    far too long to finish on any machine before the signal, and the
    uninterrupted reference stops wherever the signal happened to land."""
    long_run = ("--steps", "1000000")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "engine.training.train", *args(data, out, *long_run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "saving a checkpoint" in err
    stopped_at = int(checkpoint(out)["step"].reshape(-1)[0])
    assert stopped_at >= 1
    assert main(["--resume", "--out", str(out), "--no-progress", "--stop-after", "2"]) == 0
    assert main(args(data, tmp_path / "full", *long_run, "--stop-after", str(stopped_at + 2))) == 0
    assert_same_checkpoint(checkpoint(tmp_path / "full"), checkpoint(out))


def test_bad_data_fails_at_once(data, tmp_path, capsys):
    assert main(args(data, tmp_path / "a", "--steps", "2", "--data", str(tmp_path / "missing.npz"))) == 2
    assert "not found" in capsys.readouterr().err
    x = np.zeros((4, 28, 28), np.uint8)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.array([0, 1, 2, 12]))
    assert main(args(data, tmp_path / "b", "--steps", "2", "--data", str(tmp_path / "bad.npz"))) == 2
    assert "labels must be in 0..9" in capsys.readouterr().err
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()


def test_refuses_to_overwrite_and_resume_needs_a_checkpoint(data, tmp_path, capsys):
    assert main(["--resume", "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(args(data, tmp_path / "r", "--steps", "1")) == 0
    assert main(args(data, tmp_path / "r", "--steps", "1")) == 2
    assert "--resume" in capsys.readouterr().err


def test_checkpoint_has_no_pickle(data, tmp_path):
    """Checkpoints are safetensors: plain tensors + JSON metadata."""
    assert main(args(data, tmp_path / "r", "--steps", "2")) == 0
    raw = (tmp_path / "r" / "checkpoint.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == "digitgen-checkpoint-1"
    assert json.loads(meta["train_config"])["steps"] == 2
    assert {"step", "adam/t"} <= header.keys()
    assert any(k.startswith("ema/") for k in header) and any(k.startswith("model/") for k in header)


if os.name != "posix":  # pragma: no cover
    pytestmark = pytest.mark.skip("signals")


def test_init_starts_from_an_earlier_model_and_resumes_without_its_folder(data, tmp_path, capsys):
    import shutil

    from engine.pipeline import DigitPipeline
    assert main(args(data, tmp_path / "first", "--steps", "3")) == 0
    init = tmp_path / "init"
    shutil.copytree(tmp_path / "first" / "pipeline", init)
    start = DigitPipeline.from_pretrained(init).unet.state_dict()
    # step 0 of the second run is the first run's exported (EMA) weights, in the model and in its EMA
    from engine.training.train import Trainer, TrainConfig, init_weights
    cfg = TrainConfig(data="", init=str(init))
    trainer = Trainer(cfg, *init_weights(cfg))
    for state in (trainer.model.state_dict(), trainer.ema.state_dict()):
        for k in start:
            np.testing.assert_array_equal(state[k], start[k], err_msg=k)
    # a run from it resumes exactly, even once the folder is gone
    assert main(args(data, tmp_path / "full", "--steps", "4", "--init", str(init))) == 0
    assert main(args(data, tmp_path / "split", "--steps", "4", "--stop-after", "2", "--init", str(init))) == 0
    shutil.rmtree(init)
    assert main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    assert_same_checkpoint(checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split"))
    # a model of another noise schedule is refused, naming both
    assert main(args(data, tmp_path / "bad", "--steps", "1", "--init", str(tmp_path / "first" / "pipeline"),
                     "--beta-schedule", "squaredcos_cap_v2")) == 2
    err = capsys.readouterr().err
    assert "squaredcos_cap_v2" in err and "linear" in err


def test_min_snr_weights_are_the_papers_and_zero_means_plain_mse(data, tmp_path):
    from engine.training.train import Trainer, TrainConfig
    plain = Trainer(TrainConfig(data=""), TINY)
    assert plain.loss_weights(np.array([0, 500, 999])) is None
    eps = Trainer(TrainConfig(data="", snr_gamma=5.0), TINY)
    v = Trainer(TrainConfig(data="", snr_gamma=5.0, prediction_type="v_prediction"), TINY)
    t = np.array([0, 100, 300, 999])
    abar = np.asarray(eps.scheduler.alphas_cumprod, np.float64)[t]
    snr = abar / (1 - abar)
    np.testing.assert_allclose(eps.loss_weights(t), np.minimum(snr, 5) / snr, rtol=1e-6)
    np.testing.assert_allclose(v.loss_weights(t), np.minimum(snr, 5) / (snr + 1), rtol=1e-6)
    w = eps.loss_weights(t)
    assert w[0] < 0.01 and w[-1] == 1.0    # the nearly clean step counts little, the noisiest fully
    # the weighted run trains (its loss is finite and falls) and its log records the weighted loss
    assert main(args(data, tmp_path / "snr", "--steps", "40", "--snr-gamma", "5")) == 0
    losses = [r["loss"] for r in log(tmp_path / "snr")]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-10:]) < np.mean(losses[:10])
