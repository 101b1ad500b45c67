"""Make the README's pictures from the shipped weights:

    python tools/make_readme_images.py [--weights weights] [--out docs]

docs/digits.png     every digit 0-9 (columns) x 6 seeds (rows)
docs/denoising.png  one digit per row: x_t from pure noise to the final digit,
                    then the model's estimate x̂0 at the same steps
"""
from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    print(f"wrote {out / 'digits.png'} and {out / 'denoising.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
