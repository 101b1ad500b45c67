"""A real uvicorn server whose engine steps and clock the test controls.

    python tests/controlled_server.py PORT --engine tiny|stand-in [--step-ms MS]

The app is `app.main.create_app` with the weights from DIGITGEN_WEIGHTS and
the settings from DIGITGEN_*, as in production, with two things swapped in:

* the clock the service reads deadlines from stands still until the test
  moves it (`advance S`): a deadline passes when the test says so, never
  because the machine happened to be slow (or busy) enough;
* every batched step first passes a gate: `hold` makes the next step wait,
  `step K` lets K steps through, `run` opens it. A request cannot finish
  before the test has seen what it wants to see, however fast the machine;
* the engine's measured pace, which admission checks deadlines against, is
  unknown (no deadline check) until the test pins it: `pace ROWS_PER_S
  LATENCY_S`, so a request is refused as too slow because the test says the
  engine is that slow, never because the machine is.

`--engine stand-in` replaces the UNet by one that sleeps `--step-ms` and
predicts zero noise, so the same tests run with engine steps of ~0 ms and of
hundreds of ms. Commands arrive one per line on stdin; each is answered
`ok` on stdout once it is in force. uvicorn logs to stderr.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
import uvicorn

from app.config import Settings
from app.main import create_app, server_config
from app.worker import Pace
from engine.pipeline import DigitPipeline


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


class StepGate:
    """Counts the steps the test lets through; None = unlimited."""

    def __init__(self):
        self._cv = threading.Condition()
        self._permits: int | None = None

    def set(self, permits: int | None) -> None:
        with self._cv:
            self._permits = permits
            self._cv.notify_all()

    def add(self, k: int) -> None:
        with self._cv:
            self._permits = (self._permits or 0) + k
            self._cv.notify_all()

    def wait(self) -> None:
        with self._cv:
            while self._permits == 0:
                self._cv.wait()
            if self._permits is not None:
                self._permits -= 1


class StandInUNet:
    """In place of the pipeline's UNet call: sleeps, then predicts zeros."""

    def __init__(self, step_s: float):
        self._step_s = step_s

    def __call__(self, x, timesteps, class_labels=None):
        time.sleep(self._step_s)
        return np.zeros_like(x)


def loader(gate: StepGate, engine: str, step_s: float):
    def load(folder) -> DigitPipeline:
        pipe = DigitPipeline.from_pretrained(folder)
        if engine == "stand-in":
            pipe.run_unet = StandInUNet(step_s)  # what DigitPipeline.step calls for its batched forward
        real_step = pipe.step

        def gated_step(trajectories):
            gate.wait()
            return real_step(trajectories)

        pipe.step = gated_step
        return pipe
    return load


def control(gate: StepGate, clock: ManualClock, pace: Pace) -> None:
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "hold":
            gate.set(0)
        elif cmd == "run":
            gate.set(None)
        elif cmd == "step":
            gate.add(int(arg[0]))
        elif cmd == "advance":
            clock.now += float(arg[0])
        elif cmd == "pace":
            pace.rows_per_s, pace.latency_s, pace.pinned = float(arg[0]), float(arg[1]), True
        else:
            print(f"unknown command {line!r}", file=sys.stderr, flush=True)
            continue
        print("ok", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--engine", choices=("tiny", "stand-in"), default="tiny")
    ap.add_argument("--step-ms", type=float, default=0.0)
    args = ap.parse_args()
    gate, clock, pace = StepGate(), ManualClock(), Pace()
    settings = Settings.from_env(port=args.port)
    app = create_app(settings, load_pipeline=loader(gate, args.engine, args.step_ms / 1e3), clock=clock, pace=pace)
    threading.Thread(target=control, args=(gate, clock, pace), daemon=True).start()
    server = uvicorn.Server(server_config(app, settings, log_level="warning"))  # as `digitgen serve` runs it
    try:
        server.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
