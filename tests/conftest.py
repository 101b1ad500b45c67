"""Fixtures for the service tests: a tiny but real weights folder, and real
uvicorn servers on loopback (subprocesses running the service exactly as
`uvicorn app.main:create_app --factory` does)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from engine import UNet2DModel
from engine.models.classifier import ClassifierConfig, DigitClassifier, save_classifier
from engine.nn import runtime
from engine.pipeline import DigitPipeline, SamplingDefaults

runtime.configure()  # the engine's threads, as the service and the CLI set them up

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's bench/ helpers (not an installed package)
TINY_UNET = dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                 add_attention=False, norm_num_groups=4, num_class_embeds=11)
TINY_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}


TINY_FAST_SCHEDULER = {"_class_name": "TCDScheduler", **TINY_SCHEDULER, "original_inference_steps": 50,
                       "clip_sample": True}


def make_tiny_weights(folder: Path, fast: bool = True) -> Path:
    """A tiny base model, and beside it in fast/ a tiny stand-in for the
    distilled model (random weights, but its real scheduler: TCD)."""
    DigitPipeline(UNet2DModel(**TINY_UNET, rng=np.random.default_rng(0)), TINY_SCHEDULER,
                  SamplingDefaults()).save_pretrained(folder)
    # a tiny classifier beside them, as weights/classifier is (random weights: p(digit | x0) in the stream)
    save_classifier(DigitClassifier(ClassifierConfig(channels=(4, 8, 8, 4), feature_dim=16)), folder / "classifier")
    if fast:
        DigitPipeline(UNet2DModel(**TINY_UNET, rng=np.random.default_rng(1)), TINY_FAST_SCHEDULER,
                      SamplingDefaults(scheduler="tcd", num_inference_steps=4, guidance_scale=1.0,
                                       distilled_guidance_scale=1.5, eta=0.3)
                      ).save_pretrained(folder / "fast")
    return folder


def add_tiny_onestep(folder: Path) -> Path:
    """Beside make_tiny_weights' models, in onestep/ a tiny stand-in for the
    one-step student (random weights, its real export: v-prediction, LCM at 1 step)."""
    DigitPipeline(UNet2DModel(**TINY_UNET, rng=np.random.default_rng(2)),
                  {"_class_name": "LCMScheduler", **TINY_SCHEDULER, "prediction_type": "v_prediction",
                   "clip_sample": True},
                  SamplingDefaults(scheduler="lcm", num_inference_steps=1, guidance_scale=1.0,
                                   distilled_guidance_scale=1.5, eta=0.0)).save_pretrained(folder / "onestep")
    return folder


def write_bar_digits(path: Path, n: int = 64) -> Path:
    """n synthetic 'digits' as an MNIST .npz: class k is a bright bar at row 2 + 2k on faint noise."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    np.savez(path, x_train=x, y_train=y)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


def sse_events(lines):
    """Parse an SSE line iterator into (event, id, data) tuples."""
    event = {}
    for line in lines:
        if line == "":
            if event:
                yield event.get("event"), event.get("id"), json.loads(event["data"]) if "data" in event else None
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_command(port: int) -> list[str]:
    """The service as a user runs it: `digitgen serve` (app/connection.py's limits included)."""
    return [sys.executable, "-m", "digitgen", "serve", "--host", "127.0.0.1", "--port", str(port)]


def service_env(weights: Path, **settings) -> dict:
    """The environment of a test server: base is the default model unless a
    test says otherwise (the tests predate the fast model and ask base's
    samplers without naming a model)."""
    env = {**os.environ, "DIGITGEN_WEIGHTS": str(weights), "PYTHONUNBUFFERED": "1", "DIGITGEN_DEFAULT_MODEL": "base",
           "DIGITGEN_GRACEFUL_S": "5"}
    env.update({f"DIGITGEN_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Server:
    """A uvicorn subprocess; `url` once /readyz answers 200.

    engine=None runs the service exactly as `digitgen serve` does.
    engine="tiny" or "stand-in" runs tests/controlled_server.py instead (the
    same app and uvicorn configuration), whose clock, engine steps and pace
    the test drives with `control`."""

    def __init__(self, weights: Path, log: Path, engine: str | None = None, step_ms: float = 0.0, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")
        if engine is None:
            cmd, streams = service_command(self.port), dict(stdout=self._log_file, stderr=subprocess.STDOUT)
        else:
            cmd = [sys.executable, str(ROOT / "tests" / "controlled_server.py"), str(self.port),
                   "--engine", engine, "--step-ms", str(step_ms)]
            streams = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=service_env(weights, **settings), **streams)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.1)

    def control(self, command: str) -> None:
        """hold | run | step K | advance SECONDS | pace ROWS_PER_S LATENCY_S (controlled servers only);
        returns once the command is in force."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply == "ok", f"control {command!r} answered {reply!r}:\n{self.log.read_text()}"

    def metric(self, name: str, **labels) -> float:
        """One sample from /metrics (0 when absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == want or (labels and key.startswith(name + "{") and all(
                    f'{k}="{v}"' in key for k, v in labels.items())):
                return float(value)
        return 0.0

    def wait_metric(self, name: str, predicate, timeout: float = 15.0, **labels) -> float:
        end = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if predicate(value):
                return value
            if time.monotonic() > end:
                raise AssertionError(f"{name}{labels} stayed at {value} for {timeout} s")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.control("run")  # a held step would keep the engine thread from stopping
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server(tiny_weights, tmp_path_factory):
    srv = Server(tiny_weights, tmp_path_factory.mktemp("server") / "uvicorn.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
