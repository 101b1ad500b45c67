"""AdamW (PyTorch's decoupled weight decay), gradient-norm clipping, an
exponential moving average of the weights, and the learning-rate schedule."""
from __future__ import annotations

import math

import numpy as np

from ..nn.module import Module, Parameter


class AdamW:
    """Same update as torch.optim.AdamW (amsgrad=False)."""

    def __init__(self, params: list[Parameter], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t
        bc2 = 1 - b2 ** self.t
        step_size = self.lr / bc1
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if self.weight_decay:
                p.data *= 1 - self.lr * self.weight_decay
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = np.sqrt(v) / math.sqrt(bc2)
            denom += self.eps
            p.data -= step_size * (m / denom)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad.fill(0)

    # moments and step count, for checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t, np.int64)}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            out[f"m.{i}"] = m
            out[f"v.{i}"] = v
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.t = int(np.asarray(arrays["t"]).reshape(-1)[0])
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            m[...] = arrays[f"m.{i}"]
            v[...] = arrays[f"v.{i}"]


def clip_grad_norm(params: list[Parameter], max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most max_norm; returns the
    norm before clipping (as torch.nn.utils.clip_grad_norm_)."""
    total = math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in params))
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad *= scale
    return total


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, with the usual warm-up
    decay min(decay, (1 + step) / (10 + step)) so early weights fade fast."""

    def __init__(self, model: Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.copy() for k, v in model.state_dict().items()}
        self.updates = 0

    def update(self, model: Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            s = self.shadow[k]
            s *= d
            s += (1 - d) * p.data

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.shadow


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to min_ratio * base_lr at `total`."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
