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
MODEL_CONFIG = Path(__file__).resolve().parent / "configs" / "unet_mnist.json"
DATA = REPO / "data" / "mnist.npz"


def default_weights() -> Path:
    """$DIGITGEN_WEIGHTS, else the shipped weights (read when called, not at import)."""
    import os

    return Path(os.environ.get("DIGITGEN_WEIGHTS") or WEIGHTS)
