"""Sinusoidal timestep features and the MLP that embeds them (diffusers'
`Timesteps` and `TimestepEmbedding`)."""
from __future__ import annotations

import math

import numpy as np

from .layers import Linear, SiLU
from .module import Module


def timestep_features(timesteps, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                      max_period: float = 10000.0) -> np.ndarray:
    """(B,) timesteps -> (B, dim) float32 [sin | cos] features, as
    diffusers.models.embeddings.get_timestep_embedding."""
    t = np.asarray(timesteps, dtype=np.float32).reshape(-1)
    half = dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float32) / (half - freq_shift)
    freqs = np.exp(exponent).astype(np.float32)
    args = t[:, None] * freqs[None, :]
    sin, cos = np.sin(args), np.cos(args)
    emb = np.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


class Timesteps(Module):
    """No parameters; backward is not needed (timesteps are integers)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        self.num_channels, self.flip_sin_to_cos, self.freq_shift = num_channels, flip_sin_to_cos, freq_shift

    def forward(self, timesteps) -> np.ndarray:
        return timestep_features(timesteps, self.num_channels, self.flip_sin_to_cos, self.freq_shift)


class TimestepEmbedding(Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int, rng=None):
        self.linear_1 = Linear(in_channels, time_embed_dim, rng=rng)
        self.act = SiLU()
        self.linear_2 = Linear(time_embed_dim, time_embed_dim, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.linear_2(self.act(self.linear_1(x)))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return self.linear_1.backward(self.act.backward(self.linear_2.backward(grad)))
