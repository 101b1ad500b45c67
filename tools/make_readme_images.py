"""Make the README's pictures from the shipped weights:

    python tools/make_readme_images.py [--weights weights] [--out docs]

docs/digits.png     every digit 0-9 (columns) x 6 seeds (rows)
docs/denoising.png  one digit per row: x_t from pure noise to the final digit,
                    then the model's estimate x̂0 at the same steps
docs/edits.png      the edit API: a digit's lower half completed as other
                    digits; image-to-image of a 3 asked as an 8 at rising
                    strength; a morph from a 2 to an 8
"""
from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine import generation  # noqa: E402
from engine.io.images import grid  # noqa: E402
from engine.nn import runtime  # noqa: E402
from engine.pipeline import DigitPipeline  # noqa: E402


def labelled(img: Image.Image, names: list[str], rows: int, width: int = 64) -> Image.Image:
    """The image with a column on its left naming each of its rows."""
    out = Image.new(img.mode, (img.width + width, img.height), 0)
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    for r, name in enumerate(names):
        y = int((r + 0.5) * img.height / rows)
        draw.text((6, y - 6), name, fill=255 if img.mode == "L" else (255, 255, 255))
    return out


def edits(pipe: DigitPipeline) -> Image.Image:
    """Three rows, each as the service makes it (engine.generation.resolve)."""
    pipes = {"base": pipe}
    run = lambda **kw: generation.sample(pipe, [generation.resolve(pipes, "base", **kw)])[0]  # noqa: E731
    blank = -np.ones((1, 28, 28), np.float32)
    two, three = run(label=2, seed=7), run(label=3, seed=5)
    mask = np.zeros((1, 28, 28), np.float32)
    mask[:, 14:] = 1   # the model redraws the lower half
    kept = np.where(mask > 0, blank, two)
    complete = [two, kept] + [run(label=k, seed=40 + k, image=two, mask=mask) for k in (2, 3, 7, 8)]
    strengths = (0.3, 0.5, 0.7, 0.9)
    sdedit = [three, blank] + [run(label=8, seed=9, image=three, strength=s) for s in strengths]
    morph = [run(label=2, seed=21, seed_b=22, label_b=8, alpha=a) for a in np.linspace(0, 1, 6).tolist()]
    return labelled(grid(complete + sdedit + morph, cols=6, size=56), ["complete", "img2img", "morph"], rows=3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(ROOT / "weights"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--seeds", type=int, default=6)
    args = p.parse_args(argv)
    runtime.configure()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DigitPipeline.from_pretrained(args.weights)

    n = pipe.num_labels
    labels = [d for s in range(args.seeds) for d in range(n)]
    seeds = [1000 + s for s in range(args.seeds) for d in range(n)]
    images = pipe.generate(labels, seeds)
    grid(list(images), cols=n, size=56).save(out / "digits.png")

    # denoising strips: initial noise, then every 2nd step; x_t row and x̂0 row per digit
    rows_xt, rows_x0 = {}, {}
    strip_labels, strip_seeds = [2, 5, 8], [7, 11, 3]
    trs = [pipe.trajectory(l, s) for l, s in zip(strip_labels, strip_seeds)]
    for i, tr in enumerate(trs):
        rows_xt[i], rows_x0[i] = [tr.sample[0]], [tr.sample[0]]
    while not all(t.done for t in trs):
        pipe.step(trs)
        for i, tr in enumerate(trs):
            if tr.index % 2 == 0 or tr.done:
                rows_xt[i].append(tr.latest.sample)
                rows_x0[i].append(tr.latest.pred_original)
    tiles = []
    for i in range(len(trs)):
        tiles += rows_xt[i] + rows_x0[i]
    strip = grid(tiles, cols=len(rows_xt[0]), size=56)
    labelled(strip, ["x_t", "x0 est."] * len(trs), rows=2 * len(trs)).save(out / "denoising.png")
    edits(pipe).save(out / "edits.png")
    print(f"wrote {out / 'digits.png'}, {out / 'denoising.png'} and {out / 'edits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
