"""Dev-only: load a weights folder in diffusers and in the NumPy engine and
compare their outputs on a few inputs (needs torch + diffusers, see README).

    /path/to/refvenv/bin/python tools/check_diffusers_load.py [weights/unet]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel as DiffusersUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import UNet2DModel, no_grad  # noqa: E402


def main() -> int:
    folder = sys.argv[1] if len(sys.argv) > 1 else "weights/unet"
    theirs = DiffusersUNet.from_pretrained(folder).eval()
    ours = UNet2DModel.from_pretrained(folder).eval().freeze()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28), dtype=np.float32)
    t, y = np.array([10, 300, 700, 999]), np.array([0, 5, 9, 10])
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample.numpy()
    with no_grad():
        out = ours(x, t, y)
    diff = float(np.abs(out - ref).max())
    print(f"{folder}: max |numpy - diffusers| = {diff:.2e} (max |output| {float(np.abs(ref).max()):.2f})")
    return 0 if diff < 1e-4 * max(1.0, float(np.abs(ref).max())) else 1


if __name__ == "__main__":
    sys.exit(main())
