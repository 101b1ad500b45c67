"""Record diffusers' scheduler outputs into tests/fixtures/schedulers.npz.

Dev-only: needs torch + diffusers (the reference venv). From the repo root:

    /work/devenv/torchvenv/bin/python tools/make_scheduler_fixtures.py

The npz holds plain arrays only (np.load(..., allow_pickle=False)). Each case
lives under a key prefix "<sched>/<beta_schedule>/<spacing>/<steps>/<variant>":

  .../config          diffusers' full scheduler config, JSON (0-d UTF-8 bytes array)
  .../timesteps       scheduler.timesteps after set_timesteps(steps) (int16)
  .../custom_timesteps  (some lcm cases) set_timesteps(timesteps=these) instead (int64)
  .../init            initial sample                          } run cases only
  .../sigmas          (dpm only) scheduler.sigmas             }
  .../model_outputs   (steps, *shape) random model outputs    }
  .../noise           (steps, *shape) noise the step consumed }  (ddpm, ddim eta>0)
  .../prev_sample     (steps, *shape) step outputs            }
  .../pred_original   (steps, *shape) x0 predictions          }  (dpm: converted model output;
                                                                  tcd: see x0_of below)
  .../step_kwargs     JSON bytes, if any: extra step() arguments and "start" (first step index)

plus "<sched>/<beta_schedule>/add_noise/*" and "<sched>/default/config_json".
Model outputs and noise are random (fixed seeds) and stored, so the tests do
not depend on any RNG. Runs feed each step's prev_sample into the next step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_tcd as tcd_module
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler, TCDScheduler

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "schedulers.npz"
CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "lcm": LCMScheduler,
           "tcd": TCDScheduler}
SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}
SHAPE = (2, 1, 1, 2)      # batch of 2; the maths is element-wise so tiny arrays suffice
SHAPE_LONG = (1, 1, 1, 2)  # for the 1000-step runs, to keep the file small


def text(s: str) -> np.ndarray:
    """A string as a 0-d bytes array (UTF-8; np.str_ would store UTF-32)."""
    return np.array(s.encode())


def config_json(sched) -> str:
    cfg = {k: v for k, v in sched.config.items() if k != "_use_default_values"}
    cfg["_class_name"] = type(sched).__name__
    return json.dumps(cfg, sort_keys=True)


def x0_of(sched, model_output, t, sample):
    """TCD's x0 estimate, which diffusers' TCDScheduler.step computes but does
    not return (it returns x_s): its formula on the scheduler's own tensors."""
    abar = sched.alphas_cumprod[t]
    pt = sched.config.prediction_type
    if pt == "epsilon":
        return (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if pt == "sample":
        return model_output
    return abar.sqrt() * sample - (1 - abar).sqrt() * model_output


class Recorder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.seed = 0

    def put(self, key: str, value) -> None:
        assert key not in self.arrays, key
        self.arrays[key] = value

    def case(self, kind: str, schedule: str, steps: int, variant: str = "base", run: bool = True,
             shape=SHAPE, step_kwargs: dict | None = None, start: int = 0, custom: list | None = None, **config):
        cfg = {**SCHEDULES[schedule], **config}
        spacing = cfg.get("timestep_spacing", CLASSES[kind]().config.timestep_spacing)
        prefix = f"{kind}/{schedule}/{spacing}/{steps}/{variant}"
        sched = CLASSES[kind](**cfg)
        if custom is None:
            sched.set_timesteps(steps)
        else:
            assert len(custom) == steps
            sched.set_timesteps(timesteps=custom)
            self.put(f"{prefix}/custom_timesteps", np.asarray(custom, dtype=np.int64))
        self.put(f"{prefix}/config", text(config_json(sched)))
        self.put(f"{prefix}/timesteps", sched.timesteps.numpy().astype(np.int16))
        if not run:
            return
        if kind == "dpm":
            self.put(f"{prefix}/sigmas", sched.sigmas.numpy().astype(np.float32))
        step_kwargs = dict(step_kwargs or {})
        timesteps = sched.timesteps[start:]
        n = len(timesteps)
        self.seed += 1
        rng = np.random.default_rng(self.seed)
        init = rng.standard_normal(shape, dtype=np.float32)
        model_outputs = rng.standard_normal((n, *shape), dtype=np.float32)
        eta = step_kwargs.get("eta", 0.3 if kind == "tcd" else 0.0)   # TCDScheduler.step's default eta is 0.3
        uses_noise = kind in ("ddpm", "lcm") or (kind in ("ddim", "tcd") and eta > 0)
        noise = rng.standard_normal((n, *shape), dtype=np.float32) if uses_noise else None

        prev, pred = [], []
        x = torch.from_numpy(init.copy())
        for i, t in enumerate(timesteps):
            mo = torch.from_numpy(model_outputs[i].copy())
            if kind in ("ddpm", "lcm"):
                # DDPM and LCM draw their own noise through randn_tensor: hand them ours.
                def fake_randn(shape_, generator=None, device=None, dtype=None, _z=noise[i]):
                    assert tuple(shape_) == _z.shape
                    return torch.from_numpy(_z.copy())
                ddpm_module.randn_tensor = lcm_module.randn_tensor = fake_randn
                out = sched.step(mo, t, x)
                pred.append((out.pred_original_sample if kind == "ddpm" else out.denoised).numpy())
            elif kind == "tcd":  # draws like LCM (on every step but the last, if eta > 0)
                def fake_randn(shape_, generator=None, device=None, dtype=None, _z=None if noise is None else noise[i]):
                    assert _z is not None and tuple(shape_) == _z.shape
                    return torch.from_numpy(_z.copy())
                tcd_module.randn_tensor = fake_randn
                pred.append(x0_of(sched, mo, t, x).numpy())
                out = sched.step(mo, t, x, **step_kwargs)
            elif kind == "ddim":
                extra = {"variance_noise": torch.from_numpy(noise[i].copy())} if uses_noise else {}
                out = sched.step(mo, t, x, **step_kwargs, **extra)
                pred.append(out.pred_original_sample.numpy())
            else:
                out = sched.step(mo, t, x)
                pred.append(sched.model_outputs[-1].numpy())
            x = out.prev_sample
            prev.append(x.numpy())
        self.put(f"{prefix}/init", init)
        self.put(f"{prefix}/model_outputs", model_outputs)
        if noise is not None:
            self.put(f"{prefix}/noise", noise)
        self.put(f"{prefix}/prev_sample", np.stack(prev).astype(np.float32))
        self.put(f"{prefix}/pred_original", np.stack(pred).astype(np.float32))
        if step_kwargs or start:
            self.put(f"{prefix}/step_kwargs", text(json.dumps({**step_kwargs, "start": start})))

    def add_noise(self, kind: str, schedule: str):
        sched = CLASSES[kind](**SCHEDULES[schedule])
        rng = np.random.default_rng(1000 + len(self.arrays))
        x0 = rng.standard_normal((5, 2, 2, 2), dtype=np.float32)
        noise = rng.standard_normal((5, 2, 2, 2), dtype=np.float32)
        if kind == "dpm":  # DPM's add_noise reads sigmas of the set timestep list
            sched.set_timesteps(20)
            ts = sched.timesteps[[0, 3, 10, 19, 3]]
        else:
            ts = torch.tensor([0, 1, 500, 998, 999])
        prefix = f"{kind}/{schedule}/add_noise"
        self.put(f"{prefix}/timesteps", ts.numpy().astype(np.int16))
        self.put(f"{prefix}/original", x0)
        self.put(f"{prefix}/noise", noise)
        self.put(f"{prefix}/noisy", sched.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ts).numpy())
        if kind != "dpm":
            self.put(f"{prefix}/velocity",
                     sched.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), ts).numpy())


def main() -> None:
    rec = Recorder()
    spacings = ("leading", "trailing", "linspace")

    # --- timestep lists only -------------------------------------------------
    for sp in spacings:
        for n in (3, 99, 333, 999, 1000):
            rec.case("ddpm", "linear", n, run=False, timestep_spacing=sp)
    for n in (3, 10, 333, 999):
        rec.case("ddpm", "linear", n, "offset1", run=False, steps_offset=1)
        rec.case("ddim", "linear", n, "offset1", run=False, steps_offset=1)
    for sp in spacings:
        for n in (3, 333, 1000):
            rec.case("ddim", "linear", n, run=False, timestep_spacing=sp)
        for n in (5, 99, 333, 999):
            rec.case("dpm", "linear", n, run=False, timestep_spacing=sp)
        for n in (10, 25):
            rec.case("dpm", "squaredcos_cap_v2", n, "lambdaclip", run=False, timestep_spacing=sp,
                     lambda_min_clipped=-5.1)
    rec.case("dpm", "linear", 1000, run=False, timestep_spacing="trailing")
    rec.case("dpm", "linear", 10, "offset1", run=False, timestep_spacing="leading", steps_offset=1)
    for sp in ("leading", "linspace"):
        rec.case("ddpm", "linear", 7, "T50", run=False, timestep_spacing=sp, num_train_timesteps=50)

    # --- DDPM runs -------------------------------------------------------------
    for sp in spacings:
        for n in (1, 7, 10, 20, 50):
            rec.case("ddpm", "linear", n, timestep_spacing=sp)
    for sched in ("scaled_linear", "squaredcos_cap_v2"):
        for sp in spacings:
            rec.case("ddpm", sched, 20, timestep_spacing=sp)
    rec.case("ddpm", "linear", 20, "vpred", prediction_type="v_prediction")
    rec.case("ddpm", "linear", 20, "vpred-noclip", prediction_type="v_prediction", clip_sample=False)
    rec.case("ddpm", "linear", 20, "sample", prediction_type="sample")
    rec.case("ddpm", "linear", 20, "noclip", clip_sample=False)
    rec.case("ddpm", "linear", 20, "cliprange2", clip_sample_range=2.0)
    rec.case("ddpm", "linear", 20, "fixed_small_log", variance_type="fixed_small_log")
    rec.case("ddpm", "linear", 20, "fixed_large", variance_type="fixed_large", clip_sample=False)
    rec.case("ddpm", "scaled_linear", 20, "offset1", steps_offset=1, clip_sample=False)
    rec.case("ddpm", "linear", 7, "T50", timestep_spacing="trailing", num_train_timesteps=50)
    rec.case("ddpm", "linear", 5, "trained", num_train_timesteps=20,
             trained_betas=np.linspace(0.01, 0.2, 20).tolist())
    rec.case("ddpm", "linear", 1000, "long", shape=SHAPE_LONG)

    # --- DDIM runs -------------------------------------------------------------
    for sp in spacings:
        for n in (1, 7, 10, 50):
            rec.case("ddim", "linear", n, timestep_spacing=sp)
    for sched in ("scaled_linear", "squaredcos_cap_v2"):
        for sp in spacings:
            rec.case("ddim", sched, 20, timestep_spacing=sp)
    rec.case("ddim", "linear", 20, "eta0.5", step_kwargs={"eta": 0.5})
    rec.case("ddim", "linear", 7, "eta0.5", timestep_spacing="trailing", step_kwargs={"eta": 0.5})
    rec.case("ddim", "linear", 20, "eta1-clippedeps", step_kwargs={"eta": 1.0, "use_clipped_model_output": True})
    rec.case("ddim", "linear", 20, "vpred", prediction_type="v_prediction")
    rec.case("ddim", "linear", 20, "sample", prediction_type="sample")
    rec.case("ddim", "linear", 20, "noclip", clip_sample=False)
    rec.case("ddim", "linear", 20, "alpha1false", set_alpha_to_one=False)
    rec.case("ddim", "scaled_linear", 20, "sd", steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    rec.case("ddim", "linear", 1000, "long", shape=SHAPE_LONG)

    # --- DPM-Solver++ runs -----------------------------------------------------
    for sp in spacings:
        for n in (1, 2, 3, 7, 10, 20, 50):
            rec.case("dpm", "linear", n, timestep_spacing=sp)
    for sched in ("scaled_linear", "squaredcos_cap_v2"):
        rec.case("dpm", sched, 20)
    rec.case("dpm", "squaredcos_cap_v2", 20, "lambdaclip", lambda_min_clipped=-5.1)
    rec.case("dpm", "linear", 20, "vpred", prediction_type="v_prediction")
    rec.case("dpm", "linear", 20, "sample", prediction_type="sample")
    rec.case("dpm", "linear", 20, "order1", solver_order=1)
    rec.case("dpm", "linear", 20, "order3", solver_order=3)
    rec.case("dpm", "linear", 10, "order3", solver_order=3)
    rec.case("dpm", "linear", 20, "heun", solver_type="heun")
    rec.case("dpm", "linear", 10, "no-lower-final", lower_order_final=False)
    rec.case("dpm", "linear", 20, "euler-final", euler_at_final=True, final_sigmas_type="sigma_min")
    rec.case("dpm", "linear", 20, "sigma_min", final_sigmas_type="sigma_min")
    rec.case("dpm", "linear", 10, "sigma_min", final_sigmas_type="sigma_min")
    rec.case("dpm", "linear", 14, "base")
    rec.case("dpm", "linear", 15, "base")
    rec.case("dpm", "linear", 20, "start5", start=5)
    rec.case("dpm", "linear", 999, "long", shape=SHAPE_LONG)
    rec.case("dpm", "linear", 1000, "long", shape=SHAPE_LONG, timestep_spacing="trailing")

    # --- add_noise / get_velocity and default configs ----------------------
    for kind in ("ddpm", "ddim", "dpm", "lcm"):
        for sched in SCHEDULES:
            rec.add_noise(kind, sched)
        # exactly what save_config writes to scheduler_config.json
        rec.put(f"{kind}/default/config_json", text(CLASSES[kind]().to_json_string()))

    # --- LCM (the fast model's sampler); recorded last so the seeds above stay as they were
    student = dict(clip_sample=True)  # what engine.training.distill writes for the student
    for n in (1, 2, 3, 4, 8, 50):
        rec.case("lcm", "linear", n, "student", **student)
    for n in (1, 4, 8):
        rec.case("lcm", "scaled_linear", n)   # diffusers' defaults
    for n in (4, 20):
        rec.case("lcm", "linear", n, "orig20", original_inference_steps=20, **student)
    rec.case("lcm", "linear", 4, "vpred", prediction_type="v_prediction", **student)
    rec.case("lcm", "linear", 4, "sample", prediction_type="sample")
    rec.case("lcm", "linear", 4, "scaling1", timestep_scaling=1.0)
    rec.case("lcm", "linear", 4, "alpha1false", set_alpha_to_one=False)
    rec.case("lcm", "squaredcos_cap_v2", 4, "student", **student)
    # hand-picked schedules (weights/fast/model_index.json's "timesteps")
    rec.case("lcm", "linear", 4, "custom", custom=[999, 559, 279, 99], **student)
    rec.case("lcm", "linear", 3, "custom", custom=[979, 419, 19], **student)

    # --- TCD (the fast model's tuned sampler); after LCM, for the same reason
    for n in (1, 2, 3, 4, 8):
        rec.case("tcd", "linear", n, "student", **student)   # step's default eta, 0.3
    for eta in (0.0, 0.15, 0.5, 1.0):
        rec.case("tcd", "linear", 4, f"eta{eta:g}", step_kwargs={"eta": eta}, **student)
    rec.case("tcd", "linear", 3, "custom-eta0.2", custom=[999, 639, 299], step_kwargs={"eta": 0.2}, **student)
    rec.case("tcd", "linear", 4, "custom", custom=[999, 639, 299, 99], **student)
    for n in (1, 4, 8):
        rec.case("tcd", "scaled_linear", n)   # diffusers' defaults
    rec.case("tcd", "linear", 4, "orig20", original_inference_steps=20, **student)
    rec.case("tcd", "linear", 4, "vpred", prediction_type="v_prediction", **student)
    rec.case("tcd", "linear", 4, "sample", prediction_type="sample")
    rec.case("tcd", "linear", 4, "alpha1false", set_alpha_to_one=False)
    rec.case("tcd", "squaredcos_cap_v2", 4, "student", **student)
    # a next timestep (90) where (1 - eta) * t_next floors differently in float64 than in torch's float32
    rec.case("tcd", "linear", 2, "T910-eta0.3", custom=[181, 90], step_kwargs={"eta": 0.3},
             num_train_timesteps=910, original_inference_steps=10)
    for sched in SCHEDULES:
        rec.add_noise("tcd", sched)
    rec.put("tcd/default/config_json", text(TCDScheduler().to_json_string()))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **rec.arrays)
    print(f"wrote {len(rec.arrays)} arrays to {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
