"""The MNIST classifier that judges generated digits: its config, the
network (the engine's own layers), batched inference and its weights.
Trained by engine/evaluation/classifier.py, which says how and why it is
built this way; the evaluation and the service's p(digit | x0) stream both
run it from here.

Architecture (channels-last activations; every conv 3x3, padding 1):

    (B, 28, 28, 1) -s1-> (B, 28, 28, c0) -s2-> (B, 14, 14, c1) -s1-> (B, 14, 14, c1)
      -s2-> (B, 7, 7, c2) -s1-> (B, 7, 7, c2)        each followed by GroupNorm + SiLU
      -s2-> (B, 4, 4, c3) + SiLU -flatten-> (B, 16*c3)
      -Linear + SiLU-> features (B, feature_dim) -Linear-> logits (B, 10)

Weights: `model.safetensors` + `config.json` in one folder; no pickle.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import MAX_MODEL_PARAMETERS, WeightsError, check_weights, load_weights_into, read_json, save_safetensors
from ..io.data import NUM_CLASSES
from ..nn.layers import Conv2d, GroupNorm, Linear, SiLU
from ..nn.module import Module, ModuleList, no_grad


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ClassifierConfig:
    channels: tuple = (16, 32, 64, 32)   # c0 (28x28), c1 (14x14), c2 (7x7), c3 (4x4, flattened)
    feature_dim: int = 128               # penultimate features, used for the Fréchet distance
    norm_num_groups: int = 4
    num_classes: int = NUM_CLASSES

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        """Types and ranges checked, and the model's size (MAX_MODEL_PARAMETERS),
        before anything is built; keys other than the fields (the training
        record, metrics) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        cfg = cls(**kwargs)
        for name in ("feature_dim", "norm_num_groups", "num_classes"):
            if not _positive_int(getattr(cfg, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(cfg, name)!r}")
        if not (isinstance(cfg.channels, tuple) and len(cfg.channels) == 4 and all(map(_positive_int, cfg.channels))
                and not any(c % cfg.norm_num_groups for c in cfg.channels[:3])):
            raise ValueError(f"channels must be 4 positive ints, the first 3 multiples of "
                             f"norm_num_groups={cfg.norm_num_groups}; got {cfg.channels}")
        n = sum(math.prod(s) for s in parameter_shapes(cfg).values())
        if n > MAX_MODEL_PARAMETERS:
            raise ValueError(f"the config describes a classifier of {n:,} parameters, over this engine's bound "
                             f"of {MAX_MODEL_PARAMETERS:,}")
        return cfg

    def to_dict(self) -> dict:
        return {"_class_name": "DigitClassifier", **{k: (list(v) if isinstance(v, tuple) else v)
                                                     for k, v in dataclasses.asdict(self).items()}}


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def parameter_shapes(c: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of DigitClassifier(c)'s parameters, in its order, without
    building it (mirrors its __init__): what the weights file is checked
    against before anything is allocated."""
    c0, c1, c2, c3 = c.channels
    outs = [c0, c1, c1, c2, c2, c3]
    shapes = {}
    for i, (inp, out) in enumerate(zip([1] + outs[:-1], outs)):
        shapes[f"convs.{i}.weight"], shapes[f"convs.{i}.bias"] = (out, inp, 3, 3), (out,)
    for i, out in enumerate(outs[:-1]):
        shapes[f"norms.{i}.weight"], shapes[f"norms.{i}.bias"] = (out,), (out,)
    shapes["fc.weight"], shapes["fc.bias"] = (c.feature_dim, 16 * c3), (c.feature_dim,)
    shapes["head.weight"], shapes["head.bias"] = (c.num_classes, c.feature_dim), (c.num_classes,)
    return shapes


class DigitClassifier(Module):
    def __init__(self, config: ClassifierConfig | None = None, rng: np.random.Generator | None = None):
        self.config = c = config or ClassifierConfig()
        rng = rng if rng is not None else np.random.default_rng(0)
        c0, c1, c2, c3 = c.channels
        plan = [(1, c0, 1), (c0, c1, 2), (c1, c1, 1), (c1, c2, 2), (c2, c2, 1), (c2, c3, 2)]  # (in, out, stride)
        self.convs = ModuleList(Conv2d(i, o, 3, stride=s, padding=1, rng=rng) for i, o, s in plan)
        # GroupNorm (+ fused SiLU) after every conv but the last, whose
        # output is flattened as it is (a plain SiLU)
        self.norms = ModuleList(GroupNorm(c.norm_num_groups, o) for _, o, _ in plan[:-1])
        self.act_out = SiLU()
        self.fc = Linear(16 * c3, c.feature_dim, rng=rng)
        self.act = SiLU()
        self.head = Linear(c.feature_dim, c.num_classes, rng=rng)
        self._map_shape = None

    def features(self, x: np.ndarray) -> np.ndarray:
        """x: (B, 28, 28, 1) float32 in [-1, 1] (see `prepare`) -> (B, feature_dim)."""
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = norm(conv(h), silu=True)
        h = self.act_out(self.convs[-1](h))                   # (B, 4, 4, c3)
        self._map_shape = h.shape
        return self.act(self.fc(h.reshape(len(h), -1)))      # (B, 16*c3) -> (B, feature_dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """-> logits (B, num_classes)."""
        return self.head(self.features(x))

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """Accumulates parameter gradients; returns d loss / d x, (B, 28, 28, 1)."""
        g = self.fc.backward(self.act.backward(self.head.backward(dlogits))).reshape(self._map_shape)
        g = self.convs[-1].backward(self.act_out.backward(g))
        for conv, norm in zip(reversed(list(self.convs)[:-1]), reversed(list(self.norms))):
            g = conv.backward(norm.backward(g))
        return g


# -- inputs, loss, batched inference --------------------------------------------
def prepare(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) 0-255, or float (N, 1, 28, 28) / (N, 28, 28) in
    [-1, 1] (the pipeline's output) -> float32 (N, 28, 28, 1) in [-1, 1]."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected (N, 28, 28) or (N, 1, 28, 28) images, got {images.shape}")
    if images.dtype == np.uint8:
        x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    else:
        x = images.astype(np.float32)
    return x[..., None]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def predict(model: DigitClassifier, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """-> (probabilities (N, 10) float64, features (N, feature_dim) float64),
    in inference mode, `batch` images per forward."""
    probs, feats = [], []
    with no_grad():
        for i in range(0, len(images), batch):
            f = model.features(prepare(images[i:i + batch]))
            probs.append(softmax(model.head(f).astype(np.float64)))
            feats.append(f.astype(np.float64))
    return np.concatenate(probs), np.concatenate(feats)


# -- weights ------------------------------------------------------------------
def save_classifier(model: DigitClassifier, folder: str | Path, extra: dict | None = None) -> Path:
    """config.json (architecture + `extra`: training record, metrics) and
    model.safetensors (float32)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: np.asarray(v, np.float32) for k, v in model.state_dict().items()}, folder / WEIGHTS_NAME,
                     metadata={"format": "digitgen-classifier-1"})
    config = {**model.config.to_dict(), **(extra or {})}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path) -> tuple[DigitClassifier, dict]:
    """-> (model in eval mode, the whole config.json). Raises WeightsError
    saying what is missing or wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"classifier folder not found: {folder} "
                           f"(train one: python -m engine.evaluation.classifier train --data mnist.npz --out {folder})")
    raw = read_json(folder / CONFIG_NAME, "classifier config")
    if raw.get("_class_name") != "DigitClassifier":
        raise WeightsError(f"{folder / CONFIG_NAME} is not a DigitClassifier config")
    try:
        config = ClassifierConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"classifier config {folder / CONFIG_NAME} is invalid: {e}") from None
    path = folder / WEIGHTS_NAME
    header = check_weights(path, parameter_shapes(config), "classifier weights")  # before the model is built
    model = load_weights_into(DigitClassifier(config), path, "classifier weights", header=header)
    return model.eval(), raw
