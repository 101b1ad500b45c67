"""Weights and checkpoints as files: JSON configs and safetensors tensors
(plain arrays and string metadata; no pickle anywhere)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or do not match their config."""


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{what} is not valid JSON: {path}: {e}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} must hold a JSON object: {path}")
    return data


def load_safetensors(path: Path, what: str = "weights file") -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise WeightsError(f"{what} is corrupt or not a safetensors file: {path}: {e}") from None


def load_weights_into(model, path: Path, what: str = "weights"):
    """Load a safetensors file into `model`: every tensor must be finite
    floats and match the model's keys and shapes. Raises WeightsError."""
    path = Path(path)
    state = load_safetensors(path, f"{what} file")
    for k, v in state.items():
        if v.dtype.kind != "f":
            raise WeightsError(f"{what} file {path}: tensor {k} has dtype {v.dtype}, not float")
        if not np.all(np.isfinite(v)):
            raise WeightsError(f"{what} file {path}: tensor {k} holds NaN or inf")
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise WeightsError(f"{what} {path} do not match their config: {e}") from None
    return model


def save_safetensors(arrays: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic write (temp file + rename) so an interrupted save never leaves a
    truncated file behind."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # safetensors creates 0600 files; weights are meant to be shared
    tmp.replace(path)
