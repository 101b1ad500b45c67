"""How well the edits work on real digits: `python -m engine.evaluation.edits`
(also `digitgen eval-edits`).

* Completion (inpainting): real test digits with their lower half masked,
  each asked for its own label: the share the classifier reads as that
  label, and whether the kept half came back as given.
* Image-to-image (SDEdit): real test digits of label A asked as label B =
  (A + shift) mod 10, at several strengths: the share read as B, and the
  mean pixel distance to the original A (how much of it is kept).

Both for each model given, the digits drawn class-balanced from the test
split with the seed, every generation seeded (digit i: seed + i).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import generation, paths
from ..io import WeightsError
from ..io.data import NUM_CLASSES, DataError, from_model_range, load_mnist, to_model_range
from ..models.classifier import load_classifier, predict
from ..nn import runtime
from ..paths import model_folders
from ..pipeline import DigitPipeline, InvalidParameter
from .classifier import DEFAULT_FOLDER as DEFAULT_CLASSIFIER

STRENGTHS = (0.3, 0.5, 0.7, 0.9, 1.0)


def real_digits(data, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """per_class test digits of each class, (N, 1, 28, 28) in [-1, 1], and their labels."""
    x, y = load_mnist(data, "test")
    rng = np.random.default_rng((seed, 11))
    idx = np.concatenate([rng.choice(np.flatnonzero(y == k), per_class, replace=False) for k in range(NUM_CLASSES)])
    return to_model_range(x[idx]), y[idx]


def _run(pipe: DigitPipeline, gens: list, batch: int) -> np.ndarray:
    out = [generation.sample(pipe, gens[a:a + batch]) for a in range(0, len(gens), batch)]
    return np.concatenate(out)


def completion(pipe: DigitPipeline, classifier, images: np.ndarray, labels: np.ndarray, seed: int, batch: int,
               **sampling) -> dict:
    """Lower halves drawn, upper halves kept; each asked for its own label."""
    mask = np.zeros((1, 28, 28), np.float32)
    mask[:, 14:] = 1
    gens = [generation.resolve({"m": pipe}, "m", label=int(k), seed=seed + i, image=x, mask=mask, **sampling)
            for i, (x, k) in enumerate(zip(images, labels))]
    t0 = time.perf_counter()
    out = _run(pipe, gens, batch)
    probs, _ = predict(classifier, out)
    kept = np.abs(from_model_range(out[:, 0, :14]).astype(int) - from_model_range(images[:, 0, :14]).astype(int))
    return {"accuracy": float(np.mean(probs.argmax(1) == labels)), "kept_max_grey_levels": int(kept.max()),
            "unet_steps": gens[0].sampling.model_steps, "seconds": round(time.perf_counter() - t0, 1),
            "sampling": _sampling(gens[0])}


def sdedit(pipe: DigitPipeline, classifier, images: np.ndarray, labels: np.ndarray, seed: int, batch: int,
           shift: int = 1, strengths=STRENGTHS, **sampling) -> list[dict]:
    """Digits of label A asked as (A + shift) mod 10, per strength."""
    wanted = (labels + shift) % NUM_CLASSES
    rows = []
    for s in strengths:
        gens = [generation.resolve({"m": pipe}, "m", label=int(b), seed=seed + i, image=x, strength=s, **sampling)
                for i, (x, b) in enumerate(zip(images, wanted))]
        out = _run(pipe, gens, batch)
        probs, _ = predict(classifier, out)
        diff = (from_model_range(out[:, 0]).astype(float) - from_model_range(images[:, 0])) / 255  # in [0, 1] units
        rows.append({"strength": s, "accuracy_as_asked": float(np.mean(probs.argmax(1) == wanted)),
                     "still_read_as_original": float(np.mean(probs.argmax(1) == labels)),
                     "pixel_distance_to_original": float(np.sqrt((diff ** 2).sum(axis=(1, 2))).mean()),
                     "unet_steps": gens[0].sampling.model_steps})
    return rows


def _sampling(gen) -> dict:
    sm = gen.sampling
    return {"scheduler": sm.scheduler, "steps": sm.steps, "jumps": sm.jumps, "guidance_scale": sm.guidance_scale}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="digitgen eval-edits", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.default_weights()))
    p.add_argument("--models", default="base,fast")
    p.add_argument("--data", default=str(paths.DATA))
    p.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--jumps", default="1x1,5x3", help="RePaint (jump_length x jump_n_sample) settings for the base "
                                                     "model's completion, comma-separated")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    runtime.configure()
    try:
        classifier, _ = load_classifier(args.classifier)
        images, labels = real_digits(args.data, args.per_class, args.seed)
        folders = model_folders(Path(args.weights))
        pipes = {m: DigitPipeline.from_pretrained(folders[m]) for m in args.models.split(",") if m in folders}
    except (WeightsError, DataError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"digits": len(labels), "seed": args.seed, "models": {}}
    for name, pipe in pipes.items():
        r = report["models"][name] = {"completion": [], "sdedit": None}
        try:
            if pipe.scheduler_class in ("LCMScheduler", "TCDScheduler"):
                r["completion"].append(completion(pipe, classifier, images, labels, args.seed, args.batch))
            else:
                for spec in args.jumps.split(","):
                    jl, jn = (int(v) for v in spec.split("x"))
                    r["completion"].append(completion(pipe, classifier, images, labels, args.seed, args.batch,
                                                      jump_length=jl, jump_n_sample=jn))
            r["sdedit"] = sdedit(pipe, classifier, images, labels, args.seed, args.batch)
        except InvalidParameter as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        print(f"\n{name}: completion of the lower half, {len(labels)} real test digits asked for their own label")
        for c in r["completion"]:
            print(f"  {c['sampling']['scheduler']} {c['sampling']['steps']} steps jumps {c['sampling']['jumps']}: "
                  f"accuracy {c['accuracy']:.3f}, kept half within {c['kept_max_grey_levels']} grey level(s), "
                  f"{c['unet_steps']} UNet steps a digit, {c['seconds']} s")
        print(f"{name}: image-to-image, digit A asked as A + 1")
        print(f"  {'strength':>9}{'read as B':>11}{'still A':>9}{'distance to A':>15}{'UNet steps':>12}")
        for s in r["sdedit"]:
            print(f"  {s['strength']:>9.1f}{s['accuracy_as_asked']:>11.3f}{s['still_read_as_original']:>9.3f}"
                  f"{s['pixel_distance_to_original']:>15.2f}{s['unet_steps']:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
