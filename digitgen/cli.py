"""`digitgen` command line: serve, generate, train, distill, eval, bench, data.

Each subcommand imports only what it needs, so `digitgen generate` does not
load the web stack and `digitgen serve` does not load the trainer."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.paths import MODEL_FOLDERS, default_weights
from engine.schedulers import SCHEDULERS


def cmd_serve(args) -> int:
    from app.main import serve

    return serve(host=args.host, port=args.port, weights=args.weights) or 0


def cmd_generate(args) -> int:
    """The same request the service would run (engine.generation.resolve:
    the same defaults, bounds and seeds), written to a PNG."""
    from engine import generation
    from engine.io.images import ImageError, grid, png_bytes, read_digit, to_image
    from engine.pipeline import InvalidParameter

    if args.all and args.label is not None:
        print(f"error: give a LABEL ({args.label}) or --all, not both", file=sys.stderr)
        return 2
    name, pipe = _load(args)
    if pipe is None:
        return 2
    if not args.all and args.label is None:
        print(f"error: give a LABEL (0-{pipe.num_labels - 1}) or --all", file=sys.stderr)
        return 2
    labels = range(pipe.num_labels) if args.all else [args.label]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    try:
        image = None if args.image is None else read_digit(args.image.read_bytes())
        mask = None if args.mask is None else read_digit(args.mask.read_bytes(), mask=True)
        # one generation per label; label k's images continue the seeds of the one before (as --all always did)
        gens = [generation.resolve({name: pipe}, name, label=label, steps=args.steps, scheduler=args.scheduler,
                                   guidance_scale=args.guidance_scale, eta=args.eta, n=args.n, size=args.size,
                                   seed=generation.image_seeds(seed, k * args.n + 1)[-1], image=image, mask=mask,
                                   strength=args.strength, jump_length=args.jump_length,
                                   jump_n_sample=args.jump_n_sample)
                for k, label in enumerate(labels)]
    except (InvalidParameter, ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sm = gens[0].sampling
    print(f"generating {len(gens) * args.n} digit(s) with the {name} model: {sm.steps} {sm.scheduler} steps, "
          f"guidance {sm.guidance_scale:g} ...", file=sys.stderr, flush=True)
    images = generation.sample(pipe, gens)
    size = gens[0].size
    if len(images) == 1:
        img = to_image(images[0], size)
    else:  # one column per digit with --all, else a near-square grid
        cols = pipe.num_labels if args.all else max(1, int(len(images) ** 0.5 + 0.999))
        order = ([d * args.n + s for s in range(args.n) for d in range(pipe.num_labels)] if args.all
                 else range(len(images)))
        img = grid([images[i] for i in order], cols=cols, size=size)
    out = Path(args.out or (f"digits-{seed}.png" if args.all else f"digit-{args.label}-{seed}.png"))
    # the parameters that make it again, as the service's PNGs carry them (a --all grid is ten requests: none)
    out.write_bytes(png_bytes(img, None if args.all else generation.parameters(gens[0], grid=True)))
    print(f"wrote {out} (seed {seed}" + ("; image i used seed (seed + i) mod 2^32)" if len(images) > 1 else ")"))
    return 0


def _load(args):
    """(model name, pipeline) of --model under --weights (the service's default when not given), or (name, None)."""
    from engine import generation
    from engine.io import WeightsError
    from engine.nn import runtime
    from engine.paths import model_folders
    from engine.pipeline import DigitPipeline

    runtime.configure()
    folders = model_folders(args.weights)
    name = args.model or generation.default_model(folders)
    try:
        if name not in folders:
            raise WeightsError(f"there is no {name} model under {args.weights}")
        return name, DigitPipeline.from_pretrained(folders[name])
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return name, None


def cmd_morph(args) -> int:
    """n frames from (seed, label) to (seed_b, label_b), as the service's /morph makes them."""
    from engine import generation
    from engine.io.images import gif_bytes, grid, png_bytes, to_image
    from engine.pipeline import InvalidParameter

    name, pipe = _load(args)
    if pipe is None:
        return 2
    seed = args.seed if args.seed is not None else generation.random_seed()
    seed_b = args.seed_b if args.seed_b is not None else generation.random_seed()
    label_b = args.label if args.label_b is None else args.label_b
    try:
        gens = [generation.resolve({name: pipe}, name, label=args.label, steps=args.steps, scheduler=args.scheduler,
                                   guidance_scale=args.guidance_scale, seed=seed, size=args.size, seed_b=seed_b,
                                   label_b=label_b, alpha=k / (args.n - 1)) for k in range(args.n)]
    except InvalidParameter as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.n < 2:
        print("error: a morph has at least 2 frames (-n)", file=sys.stderr)
        return 2
    print(f"morphing ({seed}, {args.label}) -> ({seed_b}, {label_b}) in {args.n} frames with the {name} model ...",
          file=sys.stderr, flush=True)
    frames = generation.sample(pipe, gens)
    out = Path(args.out or f"morph-{seed}-{seed_b}.png")
    if out.suffix.lower() == ".gif":
        images = [to_image(x, gens[0].size) for x in frames]
        out.write_bytes(gif_bytes(images + images[-2:0:-1], frame_ms=120, hold_last_ms=120))
    else:
        out.write_bytes(png_bytes(grid(list(frames), cols=len(frames), size=gens[0].size)))
    print(f"wrote {out} (seeds {seed} and {seed_b})")
    return 0


def cmd_info(args) -> int:
    """The generation parameters a PNG carries, and the request that makes it again."""
    import json

    from engine.io.images import ImageError, png_parameters

    try:
        found = png_parameters(args.file.read_bytes())
    except (OSError, ImageError) as e:
        print(f"error: {args.file}: {e}", file=sys.stderr)
        return 2
    if found is None:
        print(f"error: {args.file} carries no generation parameters", file=sys.stderr)
        return 2
    print(json.dumps(found, indent=2))
    body = {k: v for k, v in found.items() if k not in ("engine", "image_sha256", "mask_image_sha256")}
    print(f"\nmade again by: curl -X POST http://127.0.0.1:8000/generate -H 'content-type: application/json' "
          f"-d '{json.dumps(body)}'" + ("   (with the same image and mask)" if "image_sha256" in found else ""))
    return 0


def cmd_data_mnist(args) -> int:
    """The four MNIST IDX files, from the first mirror that serves each one verified."""
    from engine.io.download import DownloadError, download_mnist, mirrors_from

    if not args.timeout > 0:
        print(f"error: --timeout must be more than 0 seconds, not {args.timeout:g}", file=sys.stderr)
        return 2
    try:
        folder = download_mnist(args.out, mirrors_from(args.mirror), timeout=args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder} (train with: digitgen train --data {folder})")
    return 0


def cmd_train(argv) -> int:
    from engine.training.train import main

    return main(argv)


def cmd_distill(argv) -> int:
    from engine.training.distill import main

    return main(argv)


def cmd_distill_onestep(argv) -> int:
    from engine.training.onestep import main

    return main(argv)


def cmd_eval_edits(argv) -> int:
    from engine.evaluation.edits import main

    return main(argv)


def cmd_eval(argv) -> int:
    from engine.evaluation.evaluate import main

    return main(argv)


BENCHES = {"engine": "the UNet forward and training step (beside diffusers when torch is installed)",
           "service": "the HTTP service on loopback, base and fast models side by side",
           "ablation": "what the engine's inference design choices are worth",
           "burst_floor": "where a 503's time goes under a burst of 50, beside bare uvicorn",
           "crowd": "idle and trickling sockets beside real clients",
           "memory": "where memory goes after heavy requests, and whether it comes back"}


def cmd_bench(argv) -> int:
    """digitgen bench NAME [options]: each bench parses its own options."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown bench {argv[0]!r}", file=out)
        print("usage: digitgen bench {" + ",".join(BENCHES) + "} [options]   (digitgen bench NAME --help)\n",
              file=out)
        for name, what in BENCHES.items():
            print(f"  {name:9} {what}", file=out)
        return 0 if out is sys.stdout else 2
    import importlib

    from engine.paths import REPO

    if not (REPO / "bench" / f"{argv[0]}.py").is_file():  # the benches are the repository's, not the package's
        print(f"error: digitgen bench runs from a checkout of the repository ({REPO / 'bench'} is not there)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    bench = importlib.import_module(f"bench.{argv[0]}")
    return bench.main(argv[1:], prog=f"digitgen bench {argv[0]}")


def _version() -> str:
    from engine.generation import engine_version

    return engine_version().removeprefix("digitgen ")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="digitgen", description="Handwritten digits from a NumPy diffusion model.")
    p.add_argument("--version", action="version", version=f"digitgen {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    # None: the service reads DIGITGEN_HOST / DIGITGEN_PORT itself, and says which one is malformed
    s.add_argument("--host", help="bind address (default: $DIGITGEN_HOST, else 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: $DIGITGEN_PORT, else 8000)")
    s.add_argument("--weights", type=Path, default=default_weights())
    s.set_defaults(func=cmd_serve)

    g = sub.add_parser("generate", help="write a digit (or a grid of 0-9) to a PNG file")
    g.add_argument("label", type=int, nargs="?", help="digit 0-9")
    g.add_argument("--all", action="store_true", help="a grid of every digit 0-9")
    g.add_argument("-n", type=int, default=1, help="images per digit")
    g.add_argument("--seed", type=int, help="default: a random one (printed)")
    g.add_argument("--steps", type=int, help="default: the model's")
    g.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="default: the model's")
    g.add_argument("--guidance-scale", type=float, help="default: the model's")
    g.add_argument("--eta", type=float, help="fresh noise a step, for ddim and tcd (default: the model's)")
    g.add_argument("--model", choices=tuple(MODEL_FOLDERS),
                   help="base (WEIGHTS), or fast or onestep (WEIGHTS/NAME); default: as the service's")
    g.add_argument("--size", type=int, help="output pixels per digit (nearest upscale; default 28, as the service)")
    g.add_argument("--image", type=Path, help="image-to-image: a PNG to start from (or, with --mask, to complete)")
    g.add_argument("--strength", type=float, help="image-to-image: 0-1, how much of the schedule runs (default 0.75)")
    g.add_argument("--mask", type=Path, help="inpainting: a PNG, white where the model draws, black where kept")
    g.add_argument("--jump-length", type=int, help="inpainting on the base model: RePaint's jump length")
    g.add_argument("--jump-n-sample", type=int, help="inpainting on the base model: RePaint's resampling count")
    g.add_argument("--out", "-o", help="output PNG path")
    g.add_argument("--weights", type=Path, default=default_weights())
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("morph", help="a morph between two seeds and/or labels, as a PNG strip or a GIF")
    m.add_argument("label", type=int, help="the first frame's digit")
    m.add_argument("--label-b", type=int, help="the last frame's digit (default: label)")
    m.add_argument("--seed", type=int, help="the first frame's seed (default: random)")
    m.add_argument("--seed-b", type=int, help="the last frame's seed (default: random)")
    m.add_argument("-n", type=int, default=16, help="frames, the ends included (default 16)")
    m.add_argument("--steps", type=int, help="default: the model's")
    m.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="default: the model's")
    m.add_argument("--guidance-scale", type=float, help="default: the model's")
    m.add_argument("--model", choices=tuple(MODEL_FOLDERS), help="default: as the service")
    m.add_argument("--size", type=int, help="pixels a frame (default 28)")
    m.add_argument("--out", "-o", help="output path: .png (a strip) or .gif")
    m.add_argument("--weights", type=Path, default=default_weights())
    m.set_defaults(func=cmd_morph)

    i = sub.add_parser("info", help="the generation parameters a PNG carries, and the request that makes it again")
    i.add_argument("file", type=Path)
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("data", help="download a data set: digitgen data mnist")
    dsub = d.add_subparsers(dest="dataset", required=True)
    dm = dsub.add_parser("mnist", help="the four MNIST IDX files, checked against their published SHA-256",
                         description="Download the four MNIST IDX files (.gz) into a folder the trainer reads, "
                                     "trying the mirrors in order for each and checking its size and SHA-256.")
    dm.add_argument("--out", type=Path, default=Path("data/mnist"), help="folder (default data/mnist)")
    dm.add_argument("--mirror", action="append", metavar="URL",
                    help="a mirror's base URL, tried in the order given (repeatable; default: "
                         "$DIGITGEN_MNIST_MIRRORS, comma-separated, else the public mirrors)")
    dm.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a mirror may stay silent, connecting or mid-transfer, before the next is tried "
                         "(default 30)")
    dm.set_defaults(func=cmd_data_mnist)

    for name, helptext in (("train", "train the diffusion model (python -m engine.training.train)"),
                           ("distill", "distill it into a few-step model (python -m engine.training.distill)"),
                           ("distill-onestep", "distill it into a one-step model (python -m engine.training.onestep)"),
                           ("eval", "score generated digits with the in-project classifier"),
                           ("eval-edits", "score inpainting and image-to-image on real digits"),
                           ("bench", "benchmarks: digitgen bench {engine,service,ablation} [options]")):
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = {"train": cmd_train, "distill": cmd_distill, "distill-onestep": cmd_distill_onestep,
                   "eval": cmd_eval, "eval-edits": cmd_eval_edits, "bench": cmd_bench}
    if argv and argv[0] in passthrough:  # these parse their own options
        return passthrough[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
