"""Start-up: bad weights stop the server at once with one clear line (no
traceback), a bad setting likewise; before the weights are loaded the
service says it is not ready."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from app.config import ConfigError, Settings
from app.main import create_app
from conftest import ROOT, Server, free_port, service_command, service_env
from test_weights_loading import append_tensor, edit_config


def start(weights, timeout=60, **settings) -> subprocess.CompletedProcess:
    return subprocess.run(service_command(free_port()), cwd=ROOT, env=service_env(weights, **settings),
                          capture_output=True, text=True, timeout=timeout)


def broken(tiny_weights, tmp_path, how):
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    unet = folder / "unet"
    if how == "corrupt":
        data = (unet / "diffusion_pytorch_model.safetensors").read_bytes()
        (unet / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "mismatched":
        config = json.loads((unet / "config.json").read_text())
        config["block_out_channels"] = [8, 32]
        (unet / "config.json").write_text(json.dumps(config))
    elif how == "no-unet":
        shutil.rmtree(unet)
    elif how == "bad-index":
        (folder / "model_index.json").write_text("{not json")
    elif how == "sparse-4gib-tensor":  # declared in the header, the file extended to hold it: no disk used
        append_tensor(unet, "extra.weight", [2**30], sparse=True)
    elif how == "nan-norm-eps":
        edit_config(unet, norm_eps=float("nan"))
    elif how == "huge-timesteps":
        sched = folder / "scheduler" / "scheduler_config.json"
        sched.write_text(json.dumps({**json.loads(sched.read_text()), "num_train_timesteps": 10**9}))
    return folder


@pytest.mark.parametrize("how, says", [
    ("missing", "weights folder not found"),
    ("corrupt", "corrupt"),
    ("mismatched", "do not match"),
    ("no-unet", "not found"),
    ("bad-index", "not valid JSON"),
    ("sparse-4gib-tensor", "unexpected tensor 'extra.weight'"),
    ("nan-norm-eps", "norm_eps"),
    ("huge-timesteps", "num_train_timesteps must be an int in [1, 100000]"),
])
def test_bad_weights_stop_start_up_with_a_clear_message(tiny_weights, tmp_path, how, says):
    weights = tmp_path / "nowhere" if how == "missing" else broken(tiny_weights, tmp_path, how)
    proc = start(weights)
    assert proc.returncode == 3, proc.stderr
    assert "digitgen cannot start" in proc.stderr and says in proc.stderr, proc.stderr
    assert str(weights) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_setting_stops_start_up_with_a_clear_message(tiny_weights):
    proc = start(tiny_weights, max_batch="lots")
    assert proc.returncode == 2  # serve's status for a bad setting (3: start-up failed)
    assert "DIGITGEN_MAX_BATCH='lots' is not a valid int" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_returns_an_exit_status_on_failed_start_up(tmp_path):
    code = (f"import sys; from app.main import serve; "
            f"sys.exit(serve(port={free_port()}, weights={str(tmp_path / 'none')!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "weights folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_stops_on_ctrl_c_with_status_0_and_no_traceback(tiny_weights, tmp_path):
    """Ctrl-C in a terminal: SIGINT, a clean shutdown, exit status 0, and no
    KeyboardInterrupt traceback under the log (uvicorn re-raises the signal)."""
    srv = Server(tiny_weights, tmp_path / "serve.log")
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(30) == 0
    srv.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log[-2000:]


def test_not_ready_before_the_weights_are_loaded(tiny_weights):
    app = create_app(Settings(weights=tiny_weights))

    async def scenario():
        # ASGITransport does not run the lifespan: this is the app before its weights are loaded
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and "retry-after" in r.headers
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.post("/generate", params={"label": 1})).status_code == 503
            assert "digitgen_ready 0" in (await c.get("/metrics")).text
            async with app.router.lifespan_context(app):
                assert (await c.get("/readyz")).status_code == 200
                assert "digitgen_ready 1" in (await c.get("/metrics")).text
            assert (await c.get("/readyz")).status_code == 503  # and not after shutdown

    asyncio.run(scenario())


def test_settings_from_environment(tmp_path):
    s = Settings.from_env({"DIGITGEN_WEIGHTS": str(tmp_path), "DIGITGEN_PORT": "9000", "DIGITGEN_MAX_QUEUE": "3",
                           "DIGITGEN_DEADLINE_S": "2.5"}, max_batch=8)
    assert (s.weights, s.port, s.max_queue, s.deadline_s, s.max_batch) == (tmp_path, 9000, 3, 2.5, 8)
    assert Settings.from_env({}).weights == ROOT / "weights"
    with pytest.raises(ConfigError, match="DIGITGEN_PORT"):
        Settings.from_env({"DIGITGEN_PORT": "http"})
    with pytest.raises(ConfigError, match="max_batch"):
        Settings.from_env({"DIGITGEN_MAX_BATCH": "0"})
