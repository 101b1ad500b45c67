"""diffusers' `Attention` as used by AttnDownBlock2D / AttnUpBlock2D /
UNetMidBlock2D: spatial self-attention over the H*W positions with an
optional GroupNorm in front, residual connection and output rescale."""
from __future__ import annotations

import numpy as np

from .layers import Dropout, GroupNorm, Linear
from .module import Module, ModuleList, grad_enabled


def softmax_lastaxis(s: np.ndarray) -> np.ndarray:
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class Attention(Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, norm_num_groups: int | None,
                 eps: float = 1e-5, rescale_output_factor: float = 1.0, residual_connection: bool = True,
                 dropout: float = 0.0, rng=None):
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.group_norm = GroupNorm(norm_num_groups, query_dim, eps) if norm_num_groups else None
        self.to_q = Linear(query_dim, inner, rng=rng)
        self.to_k = Linear(query_dim, inner, rng=rng)
        self.to_v = Linear(query_dim, inner, rng=rng)
        self.to_out = ModuleList([Linear(inner, query_dim, rng=rng), Dropout(dropout, rng=rng)])
        self._cache = None

    def _split(self, t: np.ndarray, B: int) -> np.ndarray:
        """(B*N, heads*d) -> (B, heads, N, d)"""
        return t.reshape(B, -1, self.heads, self.dim_head).transpose(0, 2, 1, 3)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (B, H, W, C) -> (B, H, W, C)"""
        B, H, W, C = x.shape
        h = x.reshape(B, H * W, C)
        if self.group_norm is not None:
            h = self.group_norm(h)
        q = self._split(self.to_q(h), B)
        k = self._split(self.to_k(h), B)
        v = self._split(self.to_v(h), B)
        probs = softmax_lastaxis((q * self.scale) @ k.transpose(0, 1, 3, 2))  # (B, heads, N, N)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, H * W, -1)
        out = self.to_out[1](self.to_out[0](ctx)).reshape(B, H, W, C)
        if self.residual_connection:
            out += x
        if self.rescale_output_factor != 1.0:
            out /= self.rescale_output_factor
        self._cache = (q, k, v, probs, x.shape) if grad_enabled() else None
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        q, k, v, probs, shape = self._cache
        self._cache = None
        B, H, W, C = shape
        if self.rescale_output_factor != 1.0:
            grad = grad / self.rescale_output_factor
        d_ctx = self.to_out[0].backward(self.to_out[1].backward(grad.reshape(B, H * W, C)))
        d_ctx = self._split(d_ctx, B)                                   # (B, heads, N, d)
        d_probs = d_ctx @ v.transpose(0, 1, 3, 2)
        d_v = probs.transpose(0, 1, 3, 2) @ d_ctx
        # softmax backward: dS = P * (dP - sum(dP * P))
        d_s = probs * (d_probs - np.einsum("bhij,bhij->bhi", d_probs, probs)[..., None])
        d_s *= self.scale
        d_q = d_s @ k
        d_k = d_s.transpose(0, 1, 3, 2) @ q

        def merge(t):
            return t.transpose(0, 2, 1, 3).reshape(B, H * W, -1)

        d_h = self.to_q.backward(merge(d_q)) + self.to_k.backward(merge(d_k)) + self.to_v.backward(merge(d_v))
        if self.group_norm is not None:
            d_h = self.group_norm.backward(d_h)
        dx = d_h.reshape(shape)
        if self.residual_connection:
            dx = dx + grad
        return dx
