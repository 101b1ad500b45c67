"""Training a user can start quickly and watch: the quick preset's
defaults, the exported model card and sampling defaults, and the live page
(`digitgen train --watch PORT`) in a real Chromium while a real training
process runs, stopped with Ctrl-C as a user stops it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_port, write_bar_digits
from engine import paths
from engine.training import runs
from engine.training.train import PRESETS, TrainConfig, build_parser, main
from test_page import Watched, browser  # noqa: F401  (the real headless Chromium fixture)
from test_train import TINY


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_bar_digits(d / "mnist.npz")
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


def test_the_quick_preset_sets_a_new_runs_defaults_and_options_win(tmp_path):
    args = build_parser().parse_args(["--preset", "quick", "--data", "x.npz", "--out", str(tmp_path / "q"),
                                      "--steps", "7"])
    cfg, meta, _ = runs.run_config(args, TrainConfig, "train")
    assert meta is None and cfg.steps == 7   # given on the command line: it wins
    assert cfg.model_config == str(paths.QUICK_MODEL_CONFIG) and cfg.lr == PRESETS["quick"]["lr"]
    assert json.loads(paths.QUICK_MODEL_CONFIG.read_text())["block_out_channels"] == [16, 32, 32]
    resumed = build_parser().parse_args(["--preset", "quick", "--resume", "--out", str(tmp_path / "q")])
    with pytest.raises(runs.RunError, match="new run"):
        runs.run_config(resumed, TrainConfig, "train")


def test_the_exported_model_samples_as_the_shipped_one_and_says_how_it_was_made(data, tmp_path):
    out = tmp_path / "run"
    assert main(["--data", str(data / "mnist.npz"), "--model-config", str(data / "tiny.json"), "--out", str(out),
                 "--batch-size", "8", "--steps", "3", "--sample-seeds", "0", "--no-progress"]) == 0
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    shipped = json.loads((ROOT / "weights" / "model_index.json").read_text())
    assert index["digitgen"]["guidance_scale"] == shipped["digitgen"]["guidance_scale"] == 1.5
    card = (out / "pipeline" / "README.md").read_text()
    assert "guidance 1.5" in card and "3 of 3 steps" in card and "digitgen eval --weights" in card


@pytest.mark.browser
def test_the_watch_page_shows_the_loss_and_samples_live_and_ctrl_c_says_what_it_does(browser, data,  # noqa: F811
                                                                                      tmp_path):
    port, out = free_port(), tmp_path / "watched"
    cmd = [sys.executable, "-m", "engine.training.train", "--data", str(data / "mnist.npz"), "--model-config",
           str(data / "tiny.json"), "--out", str(out), "--batch-size", "8", "--steps", "1000000", "--log-every", "1",
           "--sample-every", "3", "--sample-seeds", "0", "--no-progress", "--watch", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "samples" / "latest.png").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no live sample was written"
            time.sleep(0.05)
        w = Watched(browser, f"http://127.0.0.1:{port}/")
        page = w.page
        page.wait_for_function("() => Number(document.body.dataset.points) >= 5", timeout=60000)
        page.wait_for_function("() => document.querySelector('#samples').naturalWidth > 0", timeout=60000)
        assert "Step " in page.inner_text("#status") and "loss" in page.inner_text("#status")
        shown = int(page.inner_text("#sample-step").strip("(step )"))
        # it keeps up: later steps' loss points and a newer grid arrive without a reload
        page.wait_for_function(f"() => Number(document.body.dataset.points) >= {shown + 6}", timeout=60000)
        page.wait_for_function(f"() => !document.querySelector('#sample-step').textContent.includes('step {shown})')",
                               timeout=60000)
        w.check()
    finally:
        proc.send_signal(signal.SIGINT)   # Ctrl-C
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "press Ctrl-C again to stop at once" in err and "saving a checkpoint" in err
    assert (out / "checkpoint.safetensors").is_file() and (out / "pipeline" / "README.md").is_file()
