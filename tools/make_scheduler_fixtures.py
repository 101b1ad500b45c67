"""Record diffusers' scheduler outputs into tests/fixtures/schedulers.npz.

Dev-only: needs torch + diffusers (the reference venv). From the repo root:

    /work/devenv/torchvenv/bin/python tools/make_scheduler_fixtures.py [--rerecord]

Arrays the fixture already holds are kept bit for bit, once this recording
is checked to reproduce them (inputs exactly, outputs within 1e-4 of their
scale): torch builds differ in the last bit (the local torch 2.13.0 CPU wheel
rounds sqrt differently from the one that recorded them), and a rerun must
not move the existing references. --rerecord replaces them with this run's.

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

RePaint, "repaint/<beta_schedule>/<steps>/<variant>" (variant j<jump_length>n<jump_n_sample>-eta<eta>...):

  .../config, .../timesteps (int16)  as above, after set_timesteps(steps, jump_length, jump_n_sample)
  .../set_timesteps   JSON bytes: those three arguments
  .../init, .../original, .../mask   the start sample, the image and the mask (1 keep, 0 inpaint)
  .../model_outputs   (model steps, *shape)  one per step down        } float16 (values drawn so, fed to
  .../noise           (draws, *shape)  every noise drawn, in order:   }  diffusers as float32; halves
                      one per step, T // n per undo_step              }  the largest arrays)
  .../prev_sample     (len(timesteps), *shape)  the sample after each entry (step or undo_step)
  .../pred_original   (model steps, *shape)

run as diffusers' RePaintPipeline does (an entry not below the one before is an undo_step).

Image-to-image, "img2img/<sched>/<beta_schedule>/<steps><variant>/config" and, per strength,
"img2img/<sched>/<beta_schedule>/<steps><variant>/s<strength>/...":

  .../timesteps        the timesteps the run steps through: diffusers'
                       StableDiffusionImg2ImgPipeline.get_timesteps (its own code) after
                       set_timesteps(steps); for lcm/tcd set_timesteps(steps, strength=...)
                       (or timesteps=.../custom_timesteps), all of them
  .../strength, .../t_start (diffusion: get_timesteps' t_start), .../begin_index (dpm)
  .../error            (lcm/tcd) diffusers' ValueError instead of timesteps
  and for "-run" variants: .../original, .../add_noise_noise, .../init (add_noise at the first
  kept timestep, scheduler state as the pipeline has it), then model_outputs, noise (ddpm),
  prev_sample, pred_original as for runs.
"""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_repaint as repaint_module
import diffusers.schedulers.scheduling_tcd as tcd_module
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler, RePaintScheduler, TCDScheduler,
)

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
REPAINT_MASK = np.array([1.0, 0.0], dtype=np.float32).reshape(SHAPE_LONG)  # one pixel kept, one inpainted
STRENGTHS = (0.3, 0.5, 0.75, 1.0)


def text(s: str) -> np.ndarray:
    """A string as a 0-d bytes array (UTF-8; np.str_ would store UTF-32)."""
    return np.array(s.encode())


def config_json(sched) -> str:
    cfg = {k: v for k, v in sched.config.items() if k != "_use_default_values"}
    cfg["_class_name"] = type(sched).__name__
    return json.dumps(cfg, sort_keys=True)


def img2img_get_timesteps():
    """diffusers' StableDiffusionImg2ImgPipeline.get_timesteps, compiled from
    its own source (importing the pipeline needs transformers): call it with
    a stand-in pipeline, SimpleNamespace(scheduler=...)."""
    path = Path(diffusers.__file__).parent / "pipelines" / "stable_diffusion" / "pipeline_stable_diffusion_img2img.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StableDiffusionImg2ImgPipeline")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "get_timesteps")
    namespace: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["get_timesteps"]


GET_TIMESTEPS = img2img_get_timesteps()


def feed_noise(module, z: np.ndarray) -> None:
    """Make `module`'s randn_tensor return z (for schedulers that draw their own noise)."""
    def fake_randn(shape_, generator=None, device=None, dtype=None):
        assert tuple(shape_) == z.shape
        return torch.from_numpy(z.copy())
    module.randn_tensor = fake_randn


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

    def repaint(self, schedule: str, steps: int, jump_length: int, jump_n_sample: int, eta: float,
                variant: str = "", run: bool = True, **config):
        """A RePaint run as diffusers' RePaintPipeline steps it, recording every noise drawn."""
        prefix = f"repaint/{schedule}/{steps}/j{jump_length}n{jump_n_sample}-eta{eta:g}{variant}"
        sched = RePaintScheduler(**SCHEDULES[schedule], eta=eta, **config)
        sched.set_timesteps(steps, jump_length, jump_n_sample)
        self.put(f"{prefix}/config", text(config_json(sched)))
        self.put(f"{prefix}/set_timesteps", text(json.dumps(
            {"num_inference_steps": steps, "jump_length": jump_length, "jump_n_sample": jump_n_sample})))
        self.put(f"{prefix}/timesteps", sched.timesteps.numpy().astype(np.int16))
        if not run:
            return
        rng = np.random.default_rng(7000 + len(self.arrays))
        init = rng.standard_normal(SHAPE_LONG, dtype=np.float32)
        original = rng.uniform(-1, 1, SHAPE_LONG).astype(np.float32)
        draws: list[np.ndarray] = []

        def half(shape_):   # float16 values, exactly float32 too
            return rng.standard_normal(shape_, dtype=np.float32).astype(np.float16)

        def recording_randn(shape_, generator=None, device=None, dtype=None):
            z = half(tuple(shape_))
            draws.append(z)
            return torch.from_numpy(z.astype(np.float32))

        repaint_module.randn_tensor = recording_randn
        model_outputs, prev, pred = [], [], []
        x, orig, mask = (torch.from_numpy(a.copy()) for a in (init, original, REPAINT_MASK))
        t_last = sched.timesteps[0] + 1
        for t in sched.timesteps:   # RePaintPipeline.__call__'s loop
            if t < t_last:
                mo = half(SHAPE_LONG)
                model_outputs.append(mo)
                out = sched.step(torch.from_numpy(mo.astype(np.float32)), t, x, orig, mask)
                x = out.prev_sample
                pred.append(out.pred_original_sample.numpy())
            else:
                x = sched.undo_step(x, t_last)
            t_last = t
            prev.append(x.numpy())
        for key, value in (("init", init), ("original", original), ("mask", REPAINT_MASK),
                           ("model_outputs", np.stack(model_outputs)), ("noise", np.stack(draws)),
                           ("prev_sample", np.stack(prev).astype(np.float32)),
                           ("pred_original", np.stack(pred).astype(np.float32))):
            self.put(f"{prefix}/{key}", value)

    def img2img(self, kind: str, schedule: str, steps: int, strength: float, variant: str = "",
                custom: list | None = None, run: bool = False, **config):
        """The timesteps an image-to-image run at `strength` steps through, as
        diffusers' pipelines pick them; with run, a run from a noised image."""
        group = f"img2img/{kind}/{schedule}/{steps}{variant}"
        prefix = f"{group}/s{strength:g}"
        sched = CLASSES[kind](**SCHEDULES[schedule], **config)
        cfg = text(config_json(sched))
        if f"{group}/config" in self.arrays:   # one config for the strengths of a group
            assert self.arrays[f"{group}/config"] == cfg, group
        else:
            self.put(f"{group}/config", cfg)
        self.put(f"{prefix}/strength", np.float64(strength))
        if kind in ("lcm", "tcd"):   # LatentConsistencyModelImg2ImgPipeline: strength goes to set_timesteps
            if custom is not None:
                self.put(f"{prefix}/custom_timesteps", np.asarray(custom, dtype=np.int64))
            try:
                if custom is None:
                    sched.set_timesteps(steps, strength=strength)
                else:
                    sched.set_timesteps(timesteps=custom, strength=strength)
            except ValueError as e:
                self.put(f"{prefix}/error", text(str(e)))
                return
            self.put(f"{prefix}/timesteps", sched.timesteps.numpy().astype(np.int16))
            return
        sched.set_timesteps(steps)
        timesteps, runs = GET_TIMESTEPS(SimpleNamespace(scheduler=sched), steps, strength, "cpu")
        self.put(f"{prefix}/timesteps", timesteps.numpy().astype(np.int16))
        self.put(f"{prefix}/t_start", np.int64(steps - runs))
        if kind == "dpm":
            self.put(f"{prefix}/begin_index", np.int64(sched.begin_index))
        if not run:
            return
        rng = np.random.default_rng(9000 + len(self.arrays))
        original = rng.uniform(-1, 1, SHAPE).astype(np.float32)
        z0 = rng.standard_normal(SHAPE, dtype=np.float32)
        n = len(timesteps)
        model_outputs = rng.standard_normal((n, *SHAPE), dtype=np.float32)
        noise = rng.standard_normal((n, *SHAPE), dtype=np.float32) if kind == "ddpm" else None
        # the pipeline's prepare_latents: add_noise at latent_timestep = timesteps[:1]
        x = sched.add_noise(torch.from_numpy(original.copy()), torch.from_numpy(z0.copy()), timesteps[:1])
        init = x.numpy().copy()
        prev, pred = [], []
        for i, t in enumerate(timesteps):
            mo = torch.from_numpy(model_outputs[i].copy())
            if noise is not None:
                feed_noise(ddpm_module, noise[i])
            out = sched.step(mo, t, x)
            pred.append((sched.model_outputs[-1] if kind == "dpm" else out.pred_original_sample).numpy())
            x = out.prev_sample
            prev.append(x.numpy())
        for key, value in (("original", original), ("add_noise_noise", z0), ("init", init),
                           ("model_outputs", model_outputs), ("prev_sample", np.stack(prev).astype(np.float32)),
                           ("pred_original", np.stack(pred).astype(np.float32))):
            self.put(f"{prefix}/{key}", value)
        if noise is not None:
            self.put(f"{prefix}/noise", noise)

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


OUTPUTS = ("prev_sample", "pred_original", "sigmas", "noisy", "velocity")   # what diffusers computed


def keep_recorded(arrays: dict) -> None:
    """Put back the arrays OUT already holds, after checking that this run
    recorded the same thing: inputs, timesteps and configs exactly (less
    _diffusers_version), outputs within 1e-4 of their scale (a rerun's
    rounding, 1e-5 per step compounding over the long runs)."""
    if not OUT.exists():
        return
    moved, worst = 0, 0.0
    with np.load(OUT, allow_pickle=False) as old:
        for key in old.files:
            if key not in arrays:
                continue   # a case no longer recorded: dropped
            was, now = old[key], arrays[key]
            assert was.dtype == now.dtype and was.shape == now.shape, key
            if key.split("/")[-1] in OUTPUTS:
                scale = max(1.0, float(np.abs(was).max()))
                err = float(np.abs(was.astype(np.float64) - now).max()) / scale
                assert err <= 1e-4, f"{key}: this recording differs from the fixture's by {err:.3g} of its scale"
                moved += not np.array_equal(was, now)
                worst = max(worst, err)
            elif was.dtype.kind == "S" and key.endswith("config"):
                strip = lambda a: {k: v for k, v in json.loads(a.item()).items() if k != "_diffusers_version"}
                assert strip(was) == strip(now), key
            else:
                assert np.array_equal(was, now), key
            arrays[key] = was
    print(f"kept the {len(old.files)} recorded arrays ({moved} recorded again differ by up to {worst:.2g} "
          "of their scale); --rerecord replaces them")


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

    # --- RePaint; after TCD, for the same reason --------------------------------
    rec.repaint("linear", 50, 1, 1, 0.0)
    rec.repaint("linear", 50, 3, 2, 1.0)
    rec.repaint("linear", 250, 10, 10, 0.0)                 # diffusers' RePaintPipeline defaults
    rec.repaint("linear", 50, 3, 2, 0.5, "-noclip", clip_sample=False)
    rec.repaint("linear", 33, 7, 3, 1.0)                    # T // n = 30: the top is 960, not 999
    rec.repaint("squaredcos_cap_v2", 50, 10, 10, 1.0)
    rec.repaint("squaredcos_cap_v2", 250, 3, 2, 0.0)
    rec.repaint("linear", 20, 3, 3, 1.0, "-T500", num_train_timesteps=500)
    for steps, jl, jn in ((1, 10, 10), (7, 10, 10), (10, 9, 2), (20, 1, 10), (100, 5, 4), (1000, 10, 10),
                          (999, 1, 1), (1000, 1, 3)):
        rec.repaint("linear", steps, jl, jn, 0.0, run=False)
    rec.put("repaint/default/config_json", text(RePaintScheduler().to_json_string()))

    # --- image-to-image strength; last of all ------------------------------------
    for kind in ("ddpm", "ddim", "dpm"):
        for steps in (3, 7, 20):
            for strength in STRENGTHS:
                rec.img2img(kind, "linear", steps, strength)
    rec.img2img("dpm", "squaredcos_cap_v2", 25, 0.75, "-trailing", timestep_spacing="trailing")
    rec.img2img("ddim", "linear", 20, 0.75, "-trailing", timestep_spacing="trailing")
    for kind in ("lcm", "tcd"):
        for steps in (1, 2, 4, 8):
            for strength in STRENGTHS:
                rec.img2img(kind, "linear", steps, strength, "-student", **student)
        for strength in STRENGTHS:
            rec.img2img(kind, "scaled_linear", 4, strength)   # diffusers' defaults
            rec.img2img(kind, "linear", 4, strength, "-orig20", original_inference_steps=20, **student)
            rec.img2img(kind, "linear", 4, strength, "-custom", custom=[999, 759, 499, 259], **student)
        rec.img2img(kind, "linear", 20, 0.3, "-student", **student)   # 15 grid points for 20 steps: an error
        rec.img2img(kind, "linear", 8, 0.1, "-student", **student)    # 5 for 8
    # runs from a noised image, starting mid-schedule (DPM-Solver through set_begin_index)
    rec.img2img("dpm", "linear", 20, 0.5, "-run", run=True)
    rec.img2img("dpm", "linear", 20, 0.3, "-order3-run", run=True, solver_order=3)
    rec.img2img("dpm", "squaredcos_cap_v2", 10, 0.75, "-run", run=True)
    rec.img2img("ddpm", "linear", 20, 0.5, "-run", run=True)
    rec.img2img("ddim", "linear", 20, 0.75, "-run", run=True)

    # --- the one-step student (weights/onestep: v-prediction, its LCM export and the TCD
    # sibling it refines with, eta 0); after everything above, for the same reason
    onestep = dict(prediction_type="v_prediction", **student)
    for n in (1, 2, 3):
        rec.case("lcm", "linear", n, "onestep", **onestep)
        rec.case("tcd", "linear", n, "onestep-eta0", step_kwargs={"eta": 0.0}, **onestep)

    if "--rerecord" not in sys.argv[1:]:
        keep_recorded(rec.arrays)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **rec.arrays)
    print(f"wrote {len(rec.arrays)} arrays to {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
