"""The UNet's down, mid and up blocks, named and ordered as in diffusers'
unet_2d_blocks.py so the state-dict keys agree.

A block is a chain of stages (resnet [+ attention], ..., down/upsampler).
Down blocks return every stage's output as a skip ("res sample"); up blocks
concatenate one skip in front of each resnet. Gradients of the skips are
routed by UNet2DModel, in one place.
"""
from __future__ import annotations

import numpy as np

from ..nn.attention import Attention
from ..nn.module import Module, ModuleList, grad_enabled
from ..nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D


def _attention(channels, head_dim, groups, eps, scale, dropout, rng):
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, norm_num_groups=groups,
                     eps=eps, rescale_output_factor=scale, dropout=dropout, rng=rng)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class DownBlock(Module):
    """DownBlock2D, or AttnDownBlock2D when `attention_head_dim` is given."""

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, add_downsample, groups, eps,
                 dropout, output_scale_factor=1.0, attention_head_dim=None, rng=None):
        self.resnets = ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps,
                          dropout, output_scale_factor, rng=rng)
            for i in range(num_layers)
        ])
        if attention_head_dim is not None:
            self.attentions = ModuleList([
                _attention(out_channels, attention_head_dim, groups, eps, output_scale_factor, dropout, rng)
                for _ in range(num_layers)
            ])
        else:
            self.attentions = None
        self.downsamplers = ModuleList([Downsample2D(out_channels, rng=rng)]) if add_downsample else None

    def forward(self, h, temb):
        """-> (h, [output of every stage])"""
        states = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions is not None:
                h = self.attentions[i](h)
            states.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states

    def backward(self, grad, state_grads):
        """grad: d(returned h); state_grads: d(each state) or None.
        The returned h is the last state, so its gradients add up."""
        dtemb = None
        g = grad
        i = len(state_grads) - 1
        if self.downsamplers is not None:
            g = _add(g, state_grads[i])
            g = self.downsamplers[0].backward(g)
            i -= 1
        for j in reversed(range(len(self.resnets))):
            g = _add(g, state_grads[i])
            i -= 1
            if self.attentions is not None:
                g = self.attentions[j].backward(g)
            g, dt = self.resnets[j].backward(g)
            dtemb = _add(dtemb, dt)
        return g, dtemb


class UpBlock(Module):
    """UpBlock2D, or AttnUpBlock2D when `attention_head_dim` is given."""

    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, num_layers, add_upsample,
                 groups, eps, dropout, output_scale_factor=1.0, attention_head_dim=None, rng=None):
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock2D(resnet_in + skip_channels, out_channels, temb_channels, groups, eps,
                                         dropout, output_scale_factor, rng=rng))
        self.resnets = ModuleList(resnets)
        if attention_head_dim is not None:
            self.attentions = ModuleList([
                _attention(out_channels, attention_head_dim, groups, eps, output_scale_factor, dropout, rng)
                for _ in range(num_layers)
            ])
        else:
            self.attentions = None
        self.upsamplers = ModuleList([Upsample2D(out_channels, rng=rng)]) if add_upsample else None
        self._split = []

    def forward(self, h, skips, temb):
        """skips: this block's res samples, consumed from the end."""
        split = []
        for i, resnet in enumerate(self.resnets):
            skip = skips[len(skips) - 1 - i]
            split.append(h.shape[-1])
            h = resnet(np.concatenate([h, skip], axis=-1), temb)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        if grad_enabled():
            self._split = split
        return h

    def backward(self, grad):
        """-> (d h_in, [d skip] in the order the skips were given, dtemb)"""
        dtemb = None
        g = grad
        if self.upsamplers is not None:
            g = self.upsamplers[0].backward(g)
        skip_grads = [None] * len(self.resnets)
        for i in reversed(range(len(self.resnets))):
            if self.attentions is not None:
                g = self.attentions[i].backward(g)
            g, dt = self.resnets[i].backward(g)
            dtemb = _add(dtemb, dt)
            c = self._split[i]
            skip_grads[len(self.resnets) - 1 - i] = g[..., c:]
            g = g[..., :c]
        return g, skip_grads, dtemb


class UNetMidBlock2D(Module):
    """resnet, then (attention?, resnet) x num_layers."""

    def __init__(self, channels, temb_channels, groups, eps, dropout, output_scale_factor, attention_head_dim,
                 add_attention=True, attn_groups=None, num_layers=1, rng=None):
        self.resnets = ModuleList([
            ResnetBlock2D(channels, channels, temb_channels, groups, eps, dropout, output_scale_factor, rng=rng)
            for _ in range(num_layers + 1)
        ])
        self.attentions = ModuleList([
            _attention(channels, attention_head_dim, attn_groups or groups, eps, output_scale_factor, dropout, rng)
            if add_attention else None
            for _ in range(num_layers)
        ])

    def forward(self, h, temb):
        h = self.resnets[0](h, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                h = attn(h)
            h = resnet(h, temb)
        return h

    def backward(self, grad):
        dtemb = None
        g = grad
        for i in reversed(range(len(self.attentions))):
            g, dt = self.resnets[i + 1].backward(g)
            dtemb = _add(dtemb, dt)
            if self.attentions[i] is not None:
                g = self.attentions[i].backward(g)
        g, dt = self.resnets[0].backward(g)
        return g, _add(dtemb, dt)


class DownBlock2D(DownBlock):
    pass


class AttnDownBlock2D(DownBlock):
    pass


class UpBlock2D(UpBlock):
    pass


class AttnUpBlock2D(UpBlock):
    pass


DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "AttnDownBlock2D": AttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "AttnUpBlock2D": AttnUpBlock2D}
