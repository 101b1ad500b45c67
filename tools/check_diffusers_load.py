"""Dev-only: load a weights folder in diffusers and in the NumPy engine and
compare their outputs (needs torch + diffusers, see README).

    /path/to/refvenv/bin/python tools/check_diffusers_load.py [weights/unet | weights/fast]

A UNet folder: the UNet's outputs on four inputs. A pipeline folder (unet/ +
scheduler/): the same, and for a consistency model (LCMScheduler or
TCDScheduler) whole seeded samples at 1, 2 and 4 steps, its default and every
tuned step count, diffusers' UNet2DModel + that scheduler against
DigitPipeline, fed the same noise (with the model's tuned timesteps from
model_index.json where it has them for that step count, as
`set_timesteps(timesteps=...)`, and for TCD the model's eta, as
`step(..., eta=...)`). An LCM-exported model (the one-step student) is also
sampled with diffusers' TCDScheduler built from the same config, eta 0.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_tcd as tcd_module
from diffusers import LCMScheduler, TCDScheduler
from diffusers import UNet2DModel as DiffusersUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import UNet2DModel, no_grad  # noqa: E402
from engine.nn import runtime  # noqa: E402
from engine.pipeline import DigitPipeline  # noqa: E402


def compare_unet(folder: Path) -> bool:
    theirs = DiffusersUNet.from_pretrained(folder).eval()
    ours = UNet2DModel.from_pretrained(folder).eval().precompute_for_inference()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28), dtype=np.float32)
    t, y = np.array([10, 300, 700, 999]), np.array([0, 5, 9, 10])
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample.numpy()
    with no_grad():
        out = ours(x, t, y)
    diff = float(np.abs(out - ref).max())
    print(f"{folder}: max |numpy - diffusers| = {diff:.2e} (max |output| {float(np.abs(ref).max()):.2f})")
    return diff < 1e-4 * max(1.0, float(np.abs(ref).max()))


CONSISTENCY = {"LCMScheduler": (LCMScheduler, lcm_module), "TCDScheduler": (TCDScheduler, tcd_module)}


def compare_consistency_sampling(folder: Path, class_name: str, eta: float | None = None) -> bool:
    """Seeded samples of diffusers' `class_name` (built from the folder's
    scheduler config, which may be the sibling's) against the engine's."""
    pipe = DigitPipeline.from_pretrained(folder)
    unet = DiffusersUNet.from_pretrained(folder / "unet").eval()
    cls, module = CONSISTENCY[class_name]
    sched = cls.from_pretrained(folder / "scheduler")
    name = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}[class_name]
    ok = True
    for steps in sorted({1, 2, 4, pipe.defaults.num_inference_steps, *map(int, pipe.defaults.timesteps or {})}):
        label, seed = 7, 11
        ours = pipe.generate([label], [seed], steps=steps, scheduler=name, eta=eta)[0]
        # the engine's draws, in its order: x_T, then one noise per step but the last
        gen = np.random.default_rng(seed)
        x = gen.standard_normal((1, 1, 28, 28), dtype=np.float32)
        noises = [gen.standard_normal((1, 1, 28, 28), dtype=np.float32) for _ in range(steps - 1)]
        module.randn_tensor = lambda shape, **kw: torch.from_numpy(noises.pop(0))
        sampling = pipe.resolve(label, steps, scheduler=name, eta=eta)
        step_kwargs = sampling.step_arguments   # TCD: the model's eta
        tuned = sampling.timesteps
        sched.set_timesteps(steps) if tuned is None else sched.set_timesteps(timesteps=list(tuned))
        sample = torch.from_numpy(x)
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet(sample, t.reshape(1), class_labels=torch.tensor([label])).sample
                sample = sched.step(eps, t, sample, **step_kwargs).prev_sample
        theirs = np.clip(sample.numpy()[0], -1, 1)
        diff = float(np.abs(ours - theirs).max())
        print(f"{folder}: {steps}-step {class_name} sample {sched.timesteps.tolist()} {step_kwargs or ''}, "
              f"max |numpy - diffusers| = {diff:.2e}")
        # one step ends at x0_hat from t=999, which scales the UNet's ~2e-6 by 1/sqrt(abar) ~ 150
        ok &= diff < (1e-3 if steps == 1 else 1e-4)
    return ok


def main() -> int:
    runtime.configure()
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "weights/unet")
    if not (folder / "unet").is_dir():
        return 0 if compare_unet(folder) else 1
    ok = compare_unet(folder / "unet")
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if sched.get("_class_name") in CONSISTENCY:
        ok &= compare_consistency_sampling(folder, sched["_class_name"])
        if sched["_class_name"] == "LCMScheduler":  # its TCD sibling, deterministic: what a one-step student refines with
            ok &= compare_consistency_sampling(folder, "TCDScheduler", eta=0.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
