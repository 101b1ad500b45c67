"""Default locations, in one place. The weights ship in the repository (and
the Docker image); the MNIST data set never does: put it at data/ (an .npz
with x_train/y_train/x_test/y_test, or the four standard IDX files) or pass
--data."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"                     # the base model (a pipeline folder)
FAST_WEIGHTS = WEIGHTS / "fast"                # the distilled few-step model
CLASSIFIER = WEIGHTS / "classifier"            # the evaluation's MNIST classifier
# The models a weights folder can hold, by the name a request gives: the base
# model is the folder itself, the distilled students subfolders of it.
MODEL_FOLDERS = {"base": ".", "fast": "fast", "onestep": "onestep"}
MODEL_CONFIG = Path(__file__).resolve().parent / "configs" / "unet_mnist.json"
QUICK_MODEL_CONFIG = MODEL_CONFIG.with_name("unet_mnist_quick.json")   # `digitgen train --preset quick`
DATA = REPO / "data" / "mnist.npz"


def default_weights() -> Path:
    """$DIGITGEN_WEIGHTS, else the shipped weights (read when called, not at import)."""
    import os

    return Path(os.environ.get("DIGITGEN_WEIGHTS") or WEIGHTS)


def model_folders(weights: Path) -> dict[str, Path]:
    """The models under a weights folder, by name: the base model always
    (whether or not it is there: loading it says so), the others when their
    folder exists."""
    weights = Path(weights)
    return {name: weights / sub for name, sub in MODEL_FOLDERS.items() if sub == "." or (weights / sub).is_dir()}
