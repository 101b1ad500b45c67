"""In-product evaluation: `python -m engine.evaluation.evaluate` (also `digitgen eval`).

Generates `--per-class` digits of every class with the service's sampler
(the pipeline's default scheduler, steps and guidance unless overridden) and
scores them with the in-project classifier (engine/evaluation/classifier.py):

* conditional accuracy: does the classifier read the digit that was asked
  for? Per class too, with the mean probability it gives the asked class;
  the same figures for real test digits are printed beside them.
* Fréchet distance between the classifier's penultimate features of the
  generated digits and of N = 10 * per-class real test digits (class-
  balanced), next to its real-vs-real floor at the same N (held-out training
  digits vs the same test digits) and the ratio. The distance is biased
  upwards at small N; only the ratio to the floor at equal N is meaningful.
* memorisation: each generated digit's pixel-space L2 distance to its
  nearest training image, against the same distance for real digits the
  diffusion model never saw (test digits). A generated digit is a
  near-copy when it is closer to a training image than all but the
  `--copy-quantile` (5%) nearest real test digits of its class are. The
  threshold is per class because pixel distances are: a "1" lies ~1.5 from
  some training "1", an "8" ~4.5 from the nearest "8". For reference the
  same rate is measured on held-out training digits (against the other
  training images): a model that makes new digits scores about the same.

* diversity: the mean pixel-space L2 distance between two digits of the
  same class, generated vs the real test sample (per class, then averaged),
  and the ratio. Few-step students fail by losing variety (every 7 alike),
  which accuracy does not see and the Fréchet distance sees only in part.

Generated digits are quantised to uint8, as the service's PNGs are, so they
and the real digits go through the same preprocessing.
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
from ..io.data import NUM_CLASSES, DataError, from_model_range, load_mnist
from ..nn import runtime
from ..pipeline import DigitPipeline, image_seeds
from ..schedulers import ETA_SAMPLERS
from ..schedulers import SCHEDULERS as SCHEDULER_NAMES
from .classifier import DEFAULT_FOLDER as DEFAULT_CLASSIFIER
from .classifier import DigitClassifier, load_classifier, predict



# -- Fréchet distance ---------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,), covariance (D, D) (unbiased), float64."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix through its
    eigendecomposition; eigenvalues below zero (round-off) are clipped."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64.

    S1 S2 is not symmetric, but it is similar to S1^(1/2) S2 S1^(1/2)
    (conjugate by S1^(1/2)), which is symmetric PSD, so the trace of its
    square root is the sum of the square roots of that matrix's
    eigenvalues: two `eigh` calls, no scipy, no complex round-off."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    r = sqrtm_psd(cov1)
    m = r @ cov2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt, 0.0))


def frechet_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


# -- samples and nearest neighbours -------------------------------------------------
def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator,
                     candidates: np.ndarray | None = None) -> np.ndarray | None:
    """`per_class` indices of each class 0-9 drawn without replacement from
    `candidates` (default: all), class-major; None if a class has too few."""
    candidates = np.arange(len(labels)) if candidates is None else candidates
    out = []
    for k in range(NUM_CLASSES):
        pool = candidates[labels[candidates] == k]
        if len(pool) < per_class:
            return None
        out.append(rng.choice(pool, per_class, replace=False))
    return np.concatenate(out)


def nearest_distances(queries: np.ndarray, pool: np.ndarray, exclude: np.ndarray | None = None,
                      chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space L2 to the nearest pool image. queries (N, 784), pool
    (M, 784), float32 in [0, 1]; exclude: (N,) pool row to skip per query
    (the query itself), -1 for none. -> (distances (N,), pool rows (N,)).

    The search ranks |p|^2 - 2 q.p (|q - p|^2 less the constant |q|^2), one
    GEMM per chunk of queries; the winner's distance is then recomputed
    directly, since the expanded form loses ~1e-3 to float32 cancellation
    near zero, exactly where copies sit."""
    pool_sq = np.einsum("ij,ij->i", pool, pool)
    arg = np.empty(len(queries), np.int64)
    for a in range(0, len(queries), chunk):
        d2 = pool_sq[None, :] - 2 * (queries[a:a + chunk] @ pool.T)     # (n, M)
        if exclude is not None:
            rows = np.flatnonzero(exclude[a:a + chunk] >= 0)
            d2[rows, exclude[a:a + chunk][rows]] = np.inf
        arg[a:a + chunk] = d2.argmin(axis=1)
    diff = queries.astype(np.float64) - pool[arg]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)), arg


def within_class_distance(flat: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean pairwise L2 distance between digits of one class, per class.
    flat (N, 784). Uses |a-b|^2 = |a|^2 + |b|^2 - 2ab over all pairs a != b."""
    out = {}
    for k in range(NUM_CLASSES):
        x = flat[labels == k].astype(np.float64)
        n = len(x)
        if n < 2:
            continue
        sq = np.einsum("ij,ij->i", x, x)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
        out[str(k)] = float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean())
    return out


def _flat(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(labels)), labels]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "mean_confidence": float(conf.mean()),
        "per_class_accuracy": {str(k): float(np.mean(pred[labels == k] == k)) for k in range(NUM_CLASSES)},
        "per_class_confidence": {str(k): float(conf[labels == k].mean()) for k in range(NUM_CLASSES)},
    }


# -- the evaluation --------------------------------------------------------------------
def generate_digits(pipe: DigitPipeline, per_class: int, seed: int, batch: int, log=None,
                    **sampling) -> tuple[np.ndarray, np.ndarray, float]:
    """per_class digits of each class, class-major, digit i seeded like a
    request's image i (image_seeds). -> (uint8 images (N, 28, 28), labels (N,), seconds)."""
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    seeds = image_seeds(seed, len(labels))
    out = []
    t0 = time.perf_counter()
    for a in range(0, len(labels), batch):
        x = pipe.generate(labels[a:a + batch], seeds[a:a + batch], **sampling)   # (b, 1, 28, 28) in [-1, 1]
        out.append(from_model_range(x[:, 0]))
        if log:
            done, el = a + len(x), time.perf_counter() - t0
            left = el / done * (len(labels) - done)
            log(f"generated {done}/{len(labels)} digits, {el:.0f}s elapsed, ~{left:.0f}s left")
    return np.concatenate(out), labels, time.perf_counter() - t0


def evaluate(pipe: DigitPipeline, classifier: DigitClassifier, data: str | Path, *, per_class: int = 100,
             steps: int | None = None, scheduler: str | None = None, guidance_scale: float | None = None,
             timesteps: list[int] | None = None, eta: float | None = None, seed: int = 0, batch: int = 100,
             nn_pool: int = 0, copy_quantile: float = 0.05,
             classifier_train_images: int | None = None, log=None) -> dict:
    """Run the whole evaluation; returns the report as a JSON-able dict.

    classifier_train_images: the classifier trained on x_train[:this]; the
    rest are its held-out digits, drawn for the real-vs-real floor."""
    t_start = time.perf_counter()
    # defaults filled and checked first, as a request to the service is
    chosen = generation.resolve({"evaluated": pipe}, "evaluated", label=0, steps=steps, scheduler=scheduler,
                                guidance_scale=guidance_scale, timesteps=timesteps, eta=eta, seed=seed).sampling
    x_train, y_train = load_mnist(data, "train")
    x_test, y_test = load_mnist(data, "test")
    N = NUM_CLASSES * per_class
    rng = np.random.default_rng((seed, 7))

    # real reference sample A (test) and the floor's sample B, disjoint from A
    ref = balanced_indices(y_test, per_class, rng)
    if ref is None:
        raise DataError(f"--per-class {per_class}: the test split has too few digits of some class")
    held_start = classifier_train_images if classifier_train_images is not None else 0
    floor = None
    if held_start < len(x_train):
        floor = balanced_indices(y_train, per_class, rng, np.arange(held_start, len(x_train)))
        floor_name, floor_x, floor_y = f"held-out train digits x_train[{held_start}:]", x_train, y_train
    if floor is None:  # not enough held-out training digits: other test digits
        floor = balanced_indices(y_test, per_class, rng, np.setdiff1d(np.arange(len(y_test)), ref))
        floor_name, floor_x, floor_y = "test digits disjoint from the reference sample", x_test, y_test
    if floor is None:
        raise DataError(f"--per-class {per_class}: not enough real digits for two disjoint samples of {N}")

    sampling = {"steps": chosen.steps, "scheduler": chosen.scheduler, "guidance_scale": chosen.guidance_scale,
                "timesteps": chosen.timesteps}
    if chosen.eta is not None:  # only the samplers that take one
        sampling["eta"] = chosen.eta
    gen, gen_labels, gen_s = generate_digits(pipe, per_class, seed, batch, log, **sampling)
    seeds = image_seeds(seed, N)

    if log:
        log("classifying and measuring distances ...")
    gen_probs, gen_feats = predict(classifier, gen)
    ref_probs, ref_feats = predict(classifier, x_test[ref])
    floor_probs, floor_feats = predict(classifier, floor_x[floor])
    fd_gen = frechet_features(gen_feats, ref_feats)
    fd_floor = frechet_features(floor_feats, ref_feats)

    # memorisation: nearest training image in pixel space
    pool_idx = (np.arange(len(x_train)) if not nn_pool or nn_pool >= len(x_train)
                else np.sort(rng.choice(len(x_train), nn_pool, replace=False)))
    pool = _flat(x_train[pool_idx])
    gen_nn, gen_arg = nearest_distances(_flat(gen), pool)
    ref_nn, _ = nearest_distances(_flat(x_test[ref]), pool)
    if floor_x is x_train:  # held-out training digits are in the pool: skip themselves
        row_of = np.full(len(x_train), -1)
        row_of[pool_idx] = np.arange(len(pool_idx))
        floor_nn, _ = nearest_distances(_flat(x_train[floor]), pool, exclude=row_of[floor])
    else:
        floor_nn, _ = nearest_distances(_flat(floor_x[floor]), pool)
    ref_labels, floor_labels = y_test[ref], floor_y[floor]
    threshold = {k: float(np.quantile(ref_nn[ref_labels == k], copy_quantile)) for k in range(NUM_CLASSES)}
    th_gen = np.array([threshold[k] for k in gen_labels])
    th_floor = np.array([threshold[k] for k in floor_labels])
    closest = int(np.argmin(gen_nn))

    gen_div = within_class_distance(_flat(gen), gen_labels)
    real_div = within_class_distance(_flat(x_test[ref]), ref_labels)
    gen_scores = _scores(gen_probs, gen_labels)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (gen_labels, gen_probs.argmax(axis=1)), 1)
    return {
        "n": N,
        "per_class": per_class,
        "sampler": {**sampling, "timesteps": list(chosen.timesteps or ()) or "evenly spaced",
                    "seed": seed, "seeds": f"{seeds[0]}..{seeds[-1]}, class-major"},
        "generated": {**gen_scores, "confusion": confusion.tolist()},
        "real_test": _scores(ref_probs, ref_labels),
        "real_floor_sample": _scores(floor_probs, floor_labels),
        "frechet": {
            "feature_dim": int(gen_feats.shape[1]),
            "generated_vs_real": fd_gen,
            "real_vs_real": fd_floor,
            "ratio": fd_gen / fd_floor if fd_floor > 0 else float("inf"),
            "real_sample": f"{N} test digits, {per_class} per class",
            "floor_sample": f"{N} {floor_name}, {per_class} per class",
        },
        "memorisation": {
            "pool": f"{len(pool_idx)} training images" + ("" if len(pool_idx) == len(x_train) else " (random subset)"),
            "metric": "pixel L2, intensities in [0, 1]",
            "generated_nn": _quantiles(gen_nn),
            "real_test_nn": _quantiles(ref_nn),
            "held_out_nn": _quantiles(floor_nn),
            "median_ratio": float(np.median(gen_nn) / np.median(ref_nn)),
            "copy_quantile": copy_quantile,
            "near_copy_threshold_per_class": {str(k): round(v, 4) for k, v in threshold.items()},
            "near_copy_fraction": float(np.mean(gen_nn < th_gen)),
            "held_out_near_copy_fraction": float(np.mean(floor_nn < th_floor)),
            "closest_pair": {"generated_index": closest, "label": int(gen_labels[closest]),
                             "seed": seeds[closest], "train_index": int(pool_idx[gen_arg[closest]]),
                             "distance": float(gen_nn[closest])},
        },
        "diversity": {
            "metric": "mean pixel L2 between two digits of the same class, intensities in [0, 1]",
            "generated": float(np.mean(list(gen_div.values()))),
            "real_test": float(np.mean(list(real_div.values()))),
            "ratio": float(np.mean(list(gen_div.values())) / np.mean(list(real_div.values()))),
            "per_class_ratio": {k: round(gen_div[k] / real_div[k], 4) for k in gen_div},
        },
        "timing": {"generate_s": round(gen_s, 1), "images_per_s": round(N / gen_s, 2),
                   "total_s": round(time.perf_counter() - t_start, 1)},
    }


def _quantiles(d: np.ndarray) -> dict:
    return {"min": float(d.min()), "median": float(np.median(d)), "mean": float(d.mean())}


# -- report ------------------------------------------------------------------------------
def format_report(r: dict) -> str:
    s, g, real, fr, mem = r["sampler"], r["generated"], r["real_test"], r["frechet"], r["memorisation"]
    div = r["diversity"]
    lines = [
        f"digitgen evaluation: {r['n']} digits ({r['per_class']} per class); {s['scheduler']}, {s['steps']} steps"
        f"{' ' + str(s['timesteps']) if isinstance(s.get('timesteps'), list) else ''}"
        f"{', eta ' + format(s['eta'], 'g') if 'eta' in s else ''}, "
        f"guidance {s['guidance_scale']:g}, seeds {s['seeds']}",
        f"pipeline {r.get('pipeline', '?')}; classifier {r.get('classifier', '?')}"
        + (f" (test accuracy {r['classifier_test_accuracy']:.4f})" if r.get("classifier_test_accuracy") else ""),
        "",
        f"{'':26}{'generated':>10}{'real test':>11}",
        f"{'conditional accuracy':26}{g['accuracy']:>10.4f}{real['accuracy']:>11.4f}",
        f"{'mean confidence (asked)':26}{g['mean_confidence']:>10.4f}{real['mean_confidence']:>11.4f}",
        "",
        "class        " + "".join(f"{k:>7}" for k in range(NUM_CLASSES)),
        "accuracy     " + "".join(f"{g['per_class_accuracy'][str(k)]:>7.3f}" for k in range(NUM_CLASSES)),
        "confidence   " + "".join(f"{g['per_class_confidence'][str(k)]:>7.3f}" for k in range(NUM_CLASSES)),
        "",
        f"Fréchet distance on the classifier's {fr['feature_dim']}-d features, N = {r['n']} each:",
        f"  generated vs real test   {fr['generated_vs_real']:10.3f}",
        f"  real vs real (floor)     {fr['real_vs_real']:10.3f}   ({fr['floor_sample']} vs the test sample)",
        f"  ratio                    {fr['ratio']:10.2f}   (1 = as close to real as real is to itself)",
        "",
        f"nearest training image ({mem['metric']}; pool: {mem['pool']}):",
        f"  {'':22}{'min':>8}{'median':>8}",
        f"  {'generated':22}{mem['generated_nn']['min']:8.3f}{mem['generated_nn']['median']:8.3f}",
        f"  {'real test':22}{mem['real_test_nn']['min']:8.3f}{mem['real_test_nn']['median']:8.3f}",
        f"  {'held-out real':22}{mem['held_out_nn']['min']:8.3f}{mem['held_out_nn']['median']:8.3f}",
        f"  near-copies (closer than the {mem['copy_quantile']:.0%} nearest real test digits of their class): "
        f"generated {mem['near_copy_fraction']:.1%}, held-out real {mem['held_out_near_copy_fraction']:.1%}",
        f"  closest: generated #{mem['closest_pair']['generated_index']} (digit {mem['closest_pair']['label']}, "
        f"seed {mem['closest_pair']['seed']}) to training image {mem['closest_pair']['train_index']}, "
        f"distance {mem['closest_pair']['distance']:.3f}",
        "",
        f"diversity ({div['metric']}):",
        f"  generated {div['generated']:.3f}, real test {div['real_test']:.3f}, ratio {div['ratio']:.3f}"
        f"   (per class {min(div['per_class_ratio'].values()):.2f}-{max(div['per_class_ratio'].values()):.2f})",
        "",
        f"generation {r['timing']['generate_s']:.0f}s ({r['timing']['images_per_s']:.2f} digits/s), "
        f"total {r['timing']['total_s']:.0f}s",
    ]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


SUMMARY = {  # figure -> where it is in a report
    "accuracy": ("generated", "accuracy"),
    "frechet": ("frechet", "generated_vs_real"),
    "frechet_floor": ("frechet", "real_vs_real"),
    "frechet_ratio": ("frechet", "ratio"),
    "diversity_ratio": ("diversity", "ratio"),
    "near_copy_fraction": ("memorisation", "near_copy_fraction"),
    "held_out_near_copy_fraction": ("memorisation", "held_out_near_copy_fraction"),
}


def mean_of(reports: list[dict]) -> dict:
    """The headline figures averaged over reports of several seed sets."""
    return {name: float(np.mean([r[a][b] for r in reports])) for name, (a, b) in SUMMARY.items()}


def format_mean(r: dict) -> str:
    lines = [f"{'seed':>6}{'accuracy':>10}{'Fréchet':>10}{'× floor':>9}{'diversity':>11}{'near-copies':>13}"]
    rows = [(rep["sampler"]["seed"], {name: rep[a][b] for name, (a, b) in SUMMARY.items()}) for rep in r["reports"]]
    for seed, m in rows + [("mean", r["mean"])]:
        lines.append(f"{seed:>6}{m['accuracy']:>10.4f}{m['frechet']:>10.3f}{m['frechet_ratio']:>9.3f}"
                     f"{m['diversity_ratio']:>11.3f}{m['near_copy_fraction']:>12.1%}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="digitgen eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("base", "fast"), default="base",
                   help="the shipped model to score: base (weights/) or fast (weights/fast/); default base")
    p.add_argument("--weights", type=Path,
                   help="a pipeline folder instead (default: --model's; base: $DIGITGEN_WEIGHTS if set)")
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="default: weights/classifier")
    p.add_argument("--data", type=Path, default=paths.DATA,
                   help="MNIST .npz or IDX folder with train and test splits (default: data/mnist.npz in the repository)")
    p.add_argument("--per-class", type=int, default=100, help="generated digits per class (default 100)")
    p.add_argument("--steps", type=int, help="default: the pipeline's")
    p.add_argument("--scheduler", choices=sorted(SCHEDULER_NAMES), help="default: the pipeline's")
    p.add_argument("--guidance-scale", type=float, help="default: the pipeline's")
    p.add_argument("--timesteps", type=_int_list, help="a hand-picked schedule, e.g. 999,639,299,99 (lcm and tcd "
                                                      "only; default: the pipeline's for that step count, else even)")
    p.add_argument("--eta", type=float, help=f"the {' or '.join(ETA_SAMPLERS)} sampler's eta in [0, 1]: the fresh "
                                             "noise each step adds, 0 deterministic (default: tcd the pipeline's, "
                                             "else 0.3; ddim 0)")
    p.add_argument("--seed", type=_int_list, default=[0],
                   help="digit i uses seed (SEED + i) mod 2^32; also picks the real samples. Several, comma-separated "
                        "(e.g. 0,1000,2000,3000): one evaluation each and their mean, since one 1,000-digit "
                        "Fréchet distance moves by several per cent from one seed set to another")
    p.add_argument("--batch", type=int, default=100, help="digits per generation batch (default 100)")
    p.add_argument("--nn-pool", type=int, default=0, help="training images searched for nearest neighbours "
                                                           "(default 0: all)")
    p.add_argument("--copy-quantile", type=float, default=0.05)
    p.add_argument("--json", type=Path, help="also write the report here as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runtime.configure()  # the engine's threads; nothing starts at import
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.per_class < 2:
        print("error: --per-class must be at least 2 (a covariance needs two samples)", file=sys.stderr)
        return 2
    if not 0 < args.copy_quantile < 1:
        print("error: --copy-quantile must be in (0, 1)", file=sys.stderr)
        return 2
    if not Path(args.data).exists():
        print(f"error: MNIST data not found: {args.data} (pass --data PATH to an .npz with "
              f"x_train/y_train/x_test/y_test, or a folder of IDX files)", file=sys.stderr)
        return 2
    if args.weights is None:
        args.weights = paths.default_weights() if args.model == "base" else paths.FAST_WEIGHTS
    reports = []
    try:
        pipe = DigitPipeline.from_pretrained(args.weights)
        classifier, info = load_classifier(args.classifier)
        for seed in args.seed:
            report = evaluate(pipe, classifier, args.data, per_class=args.per_class, steps=args.steps,
                              scheduler=args.scheduler, guidance_scale=args.guidance_scale,
                              timesteps=args.timesteps, eta=args.eta, seed=seed, batch=args.batch,
                              nn_pool=args.nn_pool, copy_quantile=args.copy_quantile,
                              classifier_train_images=info.get("training", {}).get("train_images"), log=say)
            reports.append({"pipeline": str(args.weights), "classifier": str(args.classifier),
                            "classifier_test_accuracy": info.get("metrics", {}).get("test", {}).get("accuracy"),
                            "data": str(args.data), **report})
            print(format_report(reports[-1]))
    except (WeightsError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = reports[0]
    if len(reports) > 1:
        report = {"seeds": args.seed, "mean": mean_of(reports), "reports": reports}
        print("\n" + format_mean(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
