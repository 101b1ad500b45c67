"""diffusers' ResnetBlock2D, Downsample2D and Upsample2D (conv variants)."""
from __future__ import annotations

import numpy as np

from .layers import Conv2d, Dropout, GroupNorm, Linear, SiLU
from .module import Module


class ResnetBlock2D(Module):
    """norm1 -> SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) -> norm2 -> SiLU
    -> dropout -> conv2, plus a 1x1 conv_shortcut when channels change;
    output = (shortcut + h) / output_scale_factor.

    The SiLUs after norm1/norm2 are fused into the GroupNorm kernels; they have
    no parameters, so the state-dict keys are diffusers' own."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int = 32,
                 eps: float = 1e-6, dropout: float = 0.0, output_scale_factor: float = 1.0, rng=None):
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng)
        self.time_emb_proj = Linear(temb_channels, out_channels, rng=rng) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.dropout = Dropout(dropout, rng=rng)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)
        self.nonlinearity = SiLU()  # for temb; the feature-map SiLUs are fused
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, rng=rng) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: np.ndarray, temb: np.ndarray | None) -> np.ndarray:
        """x: (B, H, W, C_in), temb: (B, T) -> (B, H, W, C_out)"""
        h = self.conv1(self.norm1(x, silu=True))
        self._temb_used = self.time_emb_proj is not None and temb is not None
        if self._temb_used:
            h += self.time_emb_proj(self.nonlinearity(temb))[:, None, None, :]
        h = self.conv2(self.dropout(self.norm2(h, silu=True)))
        h += x if self.conv_shortcut is None else self.conv_shortcut(x)
        if self.output_scale_factor != 1.0:
            h /= self.output_scale_factor
        return h

    def backward(self, grad: np.ndarray):
        """Returns (dx, dtemb)."""
        if self.output_scale_factor != 1.0:
            grad = grad / self.output_scale_factor
        dx = grad if self.conv_shortcut is None else self.conv_shortcut.backward(grad)
        dh = self.norm2.backward(self.dropout.backward(self.conv2.backward(grad)))
        dtemb = None
        if self._temb_used:
            dtemb = self.nonlinearity.backward(self.time_emb_proj.backward(dh.sum(axis=(1, 2))))
        dx = dx + self.norm1.backward(self.conv1.backward(dh))
        return dx, dtemb


class Downsample2D(Module):
    """3x3 conv with stride 2 (diffusers' use_conv=True, padding=1)."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1, rng=None):
        if padding != 1:
            raise NotImplementedError("Downsample2D: only downsample_padding=1 is supported")
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.conv(x)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return self.conv.backward(grad)


class Upsample2D(Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None, rng=None):
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        up = np.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
        return self.conv(up)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g = self.conv.backward(grad)
        B, H2, W2, C = g.shape
        return g.reshape(B, H2 // 2, 2, W2 // 2, 2, C).sum(axis=(2, 4))
