"""`digitgen` command line: serve, generate, train, distill, eval, bench.

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
    from engine.io import WeightsError
    from engine.io.images import grid, png_bytes, to_image
    from engine.nn import runtime
    from engine.paths import model_folders
    from engine.pipeline import DigitPipeline, InvalidParameter

    runtime.configure()
    if args.all and args.label is not None:
        print(f"error: give a LABEL ({args.label}) or --all, not both", file=sys.stderr)
        return 2
    folders = model_folders(args.weights)
    name = args.model or generation.default_model(folders)
    try:
        if name not in folders:
            raise WeightsError(f"there is no {name} model under {args.weights}")
        pipe = DigitPipeline.from_pretrained(folders[name])
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.all and args.label is None:
        print(f"error: give a LABEL (0-{pipe.num_labels - 1}) or --all", file=sys.stderr)
        return 2
    labels = range(pipe.num_labels) if args.all else [args.label]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    try:  # one generation per label; label k's images continue the seeds of the one before (as --all always did)
        gens = [generation.resolve({name: pipe}, name, label=label, steps=args.steps, scheduler=args.scheduler,
                                   guidance_scale=args.guidance_scale, eta=args.eta, n=args.n, size=args.size,
                                   seed=generation.image_seeds(seed, k * args.n + 1)[-1])
                for k, label in enumerate(labels)]
    except InvalidParameter as e:
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
    out.write_bytes(png_bytes(img))
    print(f"wrote {out} (seed {seed}" + ("; image i used seed (seed + i) mod 2^32)" if len(images) > 1 else ")"))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="digitgen", description="Handwritten digits from a NumPy diffusion model.")
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
                   help="base (WEIGHTS) or fast (WEIGHTS/fast); default: as the service, fast when it is there")
    g.add_argument("--size", type=int, help="output pixels per digit (nearest upscale; default 28, as the service)")
    g.add_argument("--out", "-o", help="output PNG path")
    g.add_argument("--weights", type=Path, default=default_weights())
    g.set_defaults(func=cmd_generate)

    for name, helptext in (("train", "train the diffusion model (python -m engine.training.train)"),
                           ("distill", "distill it into a few-step model (python -m engine.training.distill)"),
                           ("distill-onestep", "distill it into a one-step model (python -m engine.training.onestep)"),
                           ("eval", "score generated digits with the in-project classifier"),
                           ("bench", "benchmarks: digitgen bench {engine,service,ablation} [options]")):
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = {"train": cmd_train, "distill": cmd_distill, "distill-onestep": cmd_distill_onestep,
                   "eval": cmd_eval, "bench": cmd_bench}
    if argv and argv[0] in passthrough:  # these parse their own options
        return passthrough[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
