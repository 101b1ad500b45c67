"""Weights in diffusers' folder layout: `config.json` +
`diffusion_pytorch_model.safetensors`. No pickle anywhere: safetensors holds
plain tensors and JSON holds the config.

A folder written by diffusers' `UNet2DModel.save_pretrained` loads here, and
diffusers' `from_pretrained` loads a folder written here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .models.unet_2d import UNet2DConfig, UNet2DModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release our parity fixtures were made with


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


def save_pretrained(model: UNet2DModel, folder: str | Path, state: dict[str, np.ndarray] | None = None) -> Path:
    """Write config.json and the safetensors weights (float32). `state`
    overrides the model's own parameters (e.g. the EMA weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["_diffusers_version"] = DIFFUSERS_VERSION
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = state if state is not None else model.state_dict()
    save_safetensors({k: np.asarray(v, np.float32) for k, v in state.items()}, folder / WEIGHTS_NAME,
                     metadata={"format": "pt"})
    return folder


def load_pretrained(folder: str | Path) -> UNet2DModel:
    """Build a UNet2DModel from a diffusers-layout folder. Raises WeightsError
    with a message that says what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    raw = read_json(folder / CONFIG_NAME, "model config")
    try:
        config = UNet2DConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"model config {folder / CONFIG_NAME} is invalid: {e}") from None
    return load_weights_into(UNet2DModel(config), folder / WEIGHTS_NAME).eval()
