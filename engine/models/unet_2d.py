"""UNet2DModel: diffusers' config fields, module tree and state-dict keys,
in NumPy with a full backward pass.

The public forward takes and returns NCHW arrays like diffusers; inside,
activations are channels-last (see engine/nn/ops.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..io.weights import (MAX_MODEL_PARAMETERS, WeightsError, check_weights, load_weights_into, read_json,
                          save_safetensors)

from ..nn.embeddings import TimestepEmbedding, Timesteps
from ..nn.layers import Conv2d, Embedding, GroupNorm
from ..nn.module import Module, ModuleList, grad_enabled
from .unet_2d_blocks import DOWN_BLOCKS, UP_BLOCKS, UNetMidBlock2D

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release our parity fixtures were made with


@dataclass
class UNet2DConfig:
    """diffusers.UNet2DModel's config fields, with its defaults. `validate`
    rejects values of the wrong type or out of range (_FIELD_RULES), values
    this engine does not implement, and models over MAX_MODEL_PARAMETERS
    (diffusers' default sizes, a 274 M-parameter model, among them: a config
    says its sizes)."""

    sample_size: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    num_train_timesteps: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "UNet2DConfig":
        """Accepts a diffusers config.json dict; keys starting with '_'
        (`_class_name`, `_diffusers_version`) are kept aside, unknown keys are
        an error."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown UNet2DModel config keys: {unknown}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        cfg = cls(**kwargs, extra={k: v for k, v in d.items() if k.startswith("_")})
        cfg.validate()
        return cfg

    @property
    def null_class_label(self) -> int | None:
        """The class that means "no label" for classifier-free guidance: by
        this project's convention the last class embedding (10 of 0-10)."""
        return self.num_class_embeds - 1 if self.num_class_embeds else None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"_class_name": "UNet2DModel", **d}

    def validate(self) -> None:
        """Every field's type and range, then what the fields must agree on,
        then the size of the model they describe: all before anything is
        allocated. Raises ValueError naming the field, its value and what
        is allowed."""
        for name, (rule, optional) in _FIELD_RULES.items():
            value = getattr(self, name)
            if not (value is None and optional) and not rule.ok(value):
                shown = list(value) if isinstance(value, tuple) else value  # as config.json writes it
                raise ValueError(f"UNet2DModel config: {name}={shown!r} is not allowed: it must be "
                                 f"{rule.says}{' or null' if optional else ''}")
        self._check_consistency()
        n = parameter_count(self)
        if n > MAX_MODEL_PARAMETERS:
            raise ValueError(f"UNet2DModel config describes a model of {n:,} parameters ({n * 4 / 1e6:,.0f} MB), "
                             f"over this engine's bound of {MAX_MODEL_PARAMETERS:,} "
                             f"({MAX_MODEL_PARAMETERS * 4 / 1e6:,.0f} MB)")

    def _check_consistency(self) -> None:
        def fail(message):
            return ValueError(f"UNet2DModel config: {message}")

        ch = self.block_out_channels
        if len(self.down_block_types) != len(ch) or len(self.up_block_types) != len(ch):
            raise fail("block_out_channels, down_block_types and up_block_types must have the same length")
        for c in ch:
            if c % self.norm_num_groups:
                raise fail(f"{c} channels do not split into norm_num_groups={self.norm_num_groups} groups")
        for where, channels in _attention_channels(self):
            if self.attention_head_dim is not None and self.attention_head_dim > channels:
                raise fail(f"attention_head_dim={self.attention_head_dim} is more than the {channels} channels "
                           f"of {where}: its attention would have no heads")
        if self.mid_block_type is not None and self.add_attention:
            groups = self.attn_norm_num_groups or self.norm_num_groups
            if ch[-1] % groups:
                raise fail(f"the mid block's {ch[-1]} channels do not split into attn_norm_num_groups={groups} groups")
        if self.freq_shift >= ch[0] // 2:
            raise fail(f"freq_shift={self.freq_shift} must be less than block_out_channels[0] // 2 = {ch[0] // 2} "
                       f"(the timestep sinusoids divide by their difference)")
        step = 2 ** (len(ch) - 1)  # every block but the last halves the sample; the up blocks double it back
        if self.sample_size is not None and self.sample_size % step:
            raise fail(f"sample_size={self.sample_size} must be a multiple of {step} for {len(ch)} blocks "
                       f"(the skip connections would not line up)")


# -- what a config may hold ---------------------------------------------------------
# Bounds on config values: generous for MNIST (the shipped model: 3 blocks of
# up to 64 channels, 2 layers each, 11 classes), and small enough that the
# model they describe is sized (MAX_MODEL_PARAMETERS) before it is built.
MAX_BLOCKS = 8                 # each block but the last halves the sample
MAX_BLOCK_CHANNELS = 4096      # MNIST: 64; Stable Diffusion's UNet: 1280
MAX_LAYERS_PER_BLOCK = 16      # diffusers' models use 1-3
MAX_IO_CHANNELS = 64           # image or latent channels (MNIST: 1)
MAX_SAMPLE_SIZE = 256          # the side of a generated image (MNIST: 28)
MAX_CLASS_EMBEDS = 100_000     # classes (MNIST: 10 + the null class)
MAX_TIME_EMBEDDING_DIM = 4 * MAX_BLOCK_CHANNELS  # diffusers' default is 4 x block_out_channels[0]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return _is_int(v) or (isinstance(v, (float, np.floating)) and math.isfinite(v))


@dataclass(frozen=True)
class _Rule:
    ok: Callable[[object], bool]
    says: str                      # what it allows, for the error message


def _int(lo: int, hi: int | None = None) -> _Rule:
    return _Rule(lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi),
                 f"an int in {lo}..{hi}" if hi is not None else f"an int >= {lo}")


def _number(says: str, within: Callable[[float], bool]) -> _Rule:
    return _Rule(lambda v: _is_number(v) and within(v), f"a finite number {says}")


def _one_of(*allowed) -> _Rule:
    # by type too: True == 1, but `downsample_padding: true` is not padding 1
    return _Rule(lambda v: any(type(v) is type(a) and v == a for a in allowed), f"one of {list(allowed)}")


def _names(allowed: dict) -> _Rule:
    return _Rule(lambda v: isinstance(v, (tuple, list)) and 1 <= len(v) <= MAX_BLOCKS
                 and all(isinstance(t, str) and t in allowed for t in v),
                 f"a list of 1..{MAX_BLOCKS} of {sorted(allowed)}")


_BOOL = _one_of(False, True)
_CHANNELS = _int(1, MAX_BLOCK_CHANNELS)
_FIELD_RULES: dict[str, tuple[_Rule, bool]] = {  # name -> (rule, may be null)
    "sample_size": (_int(1, MAX_SAMPLE_SIZE), True),
    "in_channels": (_int(1, MAX_IO_CHANNELS), False),
    "out_channels": (_int(1, MAX_IO_CHANNELS), False),
    "center_input_sample": (_BOOL, False),
    "time_embedding_type": (_one_of("positional"), False),
    "time_embedding_dim": (_int(1, MAX_TIME_EMBEDDING_DIM), True),
    "freq_shift": (_int(0, MAX_BLOCK_CHANNELS // 2 - 1), False),
    "flip_sin_to_cos": (_BOOL, False),
    "down_block_types": (_names(DOWN_BLOCKS), False),
    "mid_block_type": (_one_of("UNetMidBlock2D"), True),
    "up_block_types": (_names(UP_BLOCKS), False),
    "block_out_channels": (_Rule(lambda v: isinstance(v, (tuple, list)) and 1 <= len(v) <= MAX_BLOCKS
                                 and all(_CHANNELS.ok(c) for c in v),
                                 f"a list of 1..{MAX_BLOCKS} ints, each in 1..{MAX_BLOCK_CHANNELS}"), False),
    "layers_per_block": (_int(1, MAX_LAYERS_PER_BLOCK), False),
    "mid_block_scale_factor": (_number("> 0", lambda v: v > 0), False),
    "downsample_padding": (_one_of(1), False),
    "downsample_type": (_one_of("conv"), False),
    "upsample_type": (_one_of("conv"), False),
    "dropout": (_number("in [0, 1)", lambda v: 0 <= v < 1), False),
    "act_fn": (_one_of("silu", "swish"), False),
    "attention_head_dim": (_CHANNELS, True),
    "norm_num_groups": (_CHANNELS, False),
    "attn_norm_num_groups": (_CHANNELS, True),
    "norm_eps": (_number("> 0 and <= 1", lambda v: 0 < v <= 1), False),
    "resnet_time_scale_shift": (_one_of("default"), False),
    "add_attention": (_BOOL, False),
    "class_embed_type": (_Rule(lambda v: v is None, "null (only num_class_embeds' lookup table is implemented)"),
                         False),
    "num_class_embeds": (_int(1, MAX_CLASS_EMBEDS), True),
    "num_train_timesteps": (_int(1), True),  # diffusers' learned time embedding; unused here, allocates nothing
}


# -- the model's parameters, from its config alone -----------------------------------
def _attention_channels(c: UNet2DConfig):
    """(where, channels) of every attention layer the config builds."""
    for i, t in enumerate(c.down_block_types):
        if t.startswith("Attn"):
            yield f"down block {i} ({t})", c.block_out_channels[i]
    for i, t in enumerate(c.up_block_types):
        if t.startswith("Attn"):
            yield f"up block {i} ({t})", c.block_out_channels[::-1][i]
    if c.mid_block_type is not None and c.add_attention:
        yield "the mid block", c.block_out_channels[-1]


def parameter_shapes(c: UNet2DConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter UNet2DModel(c) has, in its order,
    without building it: what weights files are checked against before the
    model is allocated, and what sizes a config before it is accepted.
    Mirrors UNet2DModel.__init__ (tests/test_weights_loading.py holds the two
    to each other). `c`'s fields must have passed their type checks."""
    shapes: dict[str, tuple[int, ...]] = {}
    ch = list(c.block_out_channels)
    temb = c.time_embedding_dim or ch[0] * 4

    def linear(name, i, o):
        shapes[name + ".weight"], shapes[name + ".bias"] = (o, i), (o,)

    def conv(name, i, o, k=3):
        shapes[name + ".weight"], shapes[name + ".bias"] = (o, i, k, k), (o,)

    def norm(name, n):
        shapes[name + ".weight"], shapes[name + ".bias"] = (n,), (n,)

    def resnet(name, i, o):
        norm(name + ".norm1", i)
        conv(name + ".conv1", i, o)
        linear(name + ".time_emb_proj", temb, o)
        norm(name + ".norm2", o)
        conv(name + ".conv2", o, o)
        if i != o:
            conv(name + ".conv_shortcut", i, o, 1)

    def attention(name, n, head_dim):
        inner = (n // head_dim) * head_dim
        norm(name + ".group_norm", n)
        for proj in ("to_q", "to_k", "to_v"):
            linear(f"{name}.{proj}", n, inner)
        linear(name + ".to_out.0", inner, n)

    conv("conv_in", c.in_channels, ch[0])
    linear("time_embedding.linear_1", ch[0], temb)
    linear("time_embedding.linear_2", temb, temb)
    if c.num_class_embeds:
        shapes["class_embedding.weight"] = (c.num_class_embeds, temb)
    head = c.attention_head_dim
    out = ch[0]
    for i, t in enumerate(c.down_block_types):
        inp, out = out, ch[i]
        name = f"down_blocks.{i}"
        for j in range(c.layers_per_block):
            resnet(f"{name}.resnets.{j}", inp if j == 0 else out, out)
        if t.startswith("Attn"):
            for j in range(c.layers_per_block):
                attention(f"{name}.attentions.{j}", out, head or out)
        if i < len(ch) - 1:
            conv(f"{name}.downsamplers.0.conv", out, out)
    if c.mid_block_type is not None:
        resnet("mid_block.resnets.0", ch[-1], ch[-1])
        resnet("mid_block.resnets.1", ch[-1], ch[-1])
        if c.add_attention:
            attention("mid_block.attentions.0", ch[-1], head or ch[-1])
    rev = ch[::-1]
    out = rev[0]
    n = c.layers_per_block + 1
    for i, t in enumerate(c.up_block_types):
        prev, out = out, rev[i]
        inp = rev[min(i + 1, len(ch) - 1)]
        name = f"up_blocks.{i}"
        for j in range(n):
            resnet(f"{name}.resnets.{j}", (prev if j == 0 else out) + (inp if j == n - 1 else out), out)
        if t.startswith("Attn"):
            for j in range(n):
                attention(f"{name}.attentions.{j}", out, head or out)
        if i < len(ch) - 1:
            conv(f"{name}.upsamplers.0.conv", out, out)
    norm("conv_norm_out", ch[0])
    conv("conv_out", ch[0], c.out_channels)
    return shapes


def parameter_count(c: UNet2DConfig) -> int:
    return sum(math.prod(s) for s in parameter_shapes(c).values())


class UNet2DModel(Module):
    def __init__(self, config: UNet2DConfig | None = None, rng: np.random.Generator | None = None, **kwargs):
        if config is None:
            config = UNet2DConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        config.validate()
        self.config = c = config
        rng = rng if rng is not None else np.random.default_rng(0)
        ch = c.block_out_channels
        temb_dim = c.time_embedding_dim or ch[0] * 4
        groups, eps, drop = c.norm_num_groups, c.norm_eps, c.dropout

        self.conv_in = Conv2d(c.in_channels, ch[0], 3, padding=1, rng=rng)
        self.time_proj = Timesteps(ch[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim, rng=rng)
        self.class_embedding = Embedding(c.num_class_embeds, temb_dim, rng=rng) if c.num_class_embeds else None

        def head_dim(block_type, channels):
            if not block_type.startswith("Attn"):
                return None
            return c.attention_head_dim if c.attention_head_dim is not None else channels

        self.down_blocks = ModuleList()
        out = ch[0]
        for i, block_type in enumerate(c.down_block_types):
            inp, out = out, ch[i]
            self.down_blocks.append(DOWN_BLOCKS[block_type](
                inp, out, temb_dim, c.layers_per_block, add_downsample=i < len(ch) - 1, groups=groups, eps=eps,
                dropout=drop, attention_head_dim=head_dim(block_type, out), rng=rng))

        self.mid_block = None
        if c.mid_block_type is not None:
            self.mid_block = UNetMidBlock2D(
                ch[-1], temb_dim, groups, eps, drop, c.mid_block_scale_factor,
                c.attention_head_dim if c.attention_head_dim is not None else ch[-1],
                add_attention=c.add_attention, attn_groups=c.attn_norm_num_groups, rng=rng)

        self.up_blocks = ModuleList()
        rev = list(reversed(ch))
        out = rev[0]
        for i, block_type in enumerate(c.up_block_types):
            prev, out = out, rev[i]
            inp = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(UP_BLOCKS[block_type](
                inp, prev, out, temb_dim, c.layers_per_block + 1, add_upsample=i < len(ch) - 1, groups=groups,
                eps=eps, dropout=drop, attention_head_dim=head_dim(block_type, out), rng=rng))

        self.conv_norm_out = GroupNorm(groups, ch[0], eps)  # + SiLU (diffusers' conv_act), fused
        self.conv_out = Conv2d(ch[0], c.out_channels, 3, padding=1, rng=rng)
        self._skip_slices: list[slice] = []  # forward's skip list, per down block
        self._up_slices: list[slice] = []    # ... and the part each up block consumed

    # -- weights in diffusers' folder layout ---------------------------------
    # A folder written by diffusers' UNet2DModel.save_pretrained loads here,
    # and diffusers' from_pretrained loads a folder written here.
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "UNet2DModel":
        """Build from config.json + diffusion_pytorch_model.safetensors. Raises
        WeightsError with a message that says what is wrong."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WeightsError(f"weights folder not found: {folder}")
        raw = read_json(folder / CONFIG_NAME, "model config")
        try:
            config = UNet2DConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"model config {folder / CONFIG_NAME} is invalid: {e}") from None
        # the file's header against the config's shapes before the model is allocated
        header = check_weights(folder / WEIGHTS_NAME, parameter_shapes(config))
        return load_weights_into(cls(config), folder / WEIGHTS_NAME, header=header).eval()

    def save_pretrained(self, folder: str | Path, state: dict[str, np.ndarray] | None = None) -> Path:
        """Write config.json and the safetensors weights (float32). `state`
        overrides the model's own parameters (e.g. the EMA weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {**self.config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = state if state is not None else self.state_dict()
        save_safetensors({k: np.asarray(v, np.float32) for k, v in state.items()}, folder / WEIGHTS_NAME,
                         metadata={"format": "pt"})
        return folder

    # ------------------------------------------------------------------
    def _embed(self, timestep, class_labels, batch: int) -> np.ndarray:
        t = np.broadcast_to(np.asarray(timestep).reshape(-1), (batch,))
        emb = self.time_embedding(self.time_proj(t).astype(self.conv_in.weight.data.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            labels = np.asarray(class_labels)
            if labels.ndim == 2 and labels.dtype.kind == "f":  # (B, num_class_embeds) weights: a mix of classes
                if labels.shape != (batch, self.class_embedding.weight.data.shape[0]):
                    raise ValueError(f"class weights must be (B, {self.class_embedding.weight.data.shape[0]}), "
                                     f"got {labels.shape}")
                # exact for a one-hot row (1 x the row + 0 x the others), so a mix's end is the plain label
                emb = emb + (labels.astype(emb.dtype) @ self.class_embedding.weight.data)
            else:
                labels = np.broadcast_to(labels.astype(np.int64).reshape(-1), (batch,))
                emb = emb + self.class_embedding(labels)
        elif class_labels is not None:
            raise ValueError("class_embedding needs to be initialized in order to use class conditioning")
        return emb

    def forward(self, sample: np.ndarray, timestep, class_labels=None) -> np.ndarray:
        """sample: (B, C, H, W); timestep: scalar or (B,); class_labels: (B,) ints,
        or (B, num_class_embeds) float weights of the class embeddings to mix
        (a morph between two labels; an extension: diffusers takes ints).
        Returns the model output, (B, out_channels, H, W). For inference on
        large batches, models.runner.InferenceRunner runs it in shards."""
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be (B, {self.config.in_channels}, H, W), got {sample.shape}")
        B = sample.shape[0]
        x = np.ascontiguousarray(sample.transpose(0, 2, 3, 1), dtype=self.conv_in.weight.data.dtype)
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        emb = self._embed(timestep, class_labels, B)

        h = self.conv_in(x)
        skips = [h]
        skip_slices = []
        for block in self.down_blocks:
            h, states = block(h, emb)
            skip_slices.append(slice(len(skips), len(skips) + len(states)))
            skips.extend(states)
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        up_slices = []
        for block in self.up_blocks:
            n = len(block.resnets)
            up_slices.append(slice(len(skips) - n, len(skips)))
            h = block(h, skips[-n:], emb)
            del skips[-n:]
        if grad_enabled():  # like every layer's cache: only for backward (inference may run on several threads)
            self._skip_slices, self._up_slices = skip_slices, up_slices
        h = self.conv_out(self.conv_norm_out(h, silu=True))
        return h.transpose(0, 3, 1, 2)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """grad: d loss / d output, (B, C, H, W). Accumulates every parameter's
        .grad and returns d loss / d sample (B, C, H, W)."""
        g = np.ascontiguousarray(grad.transpose(0, 2, 3, 1), dtype=self.conv_out.weight.data.dtype)
        g = self.conv_norm_out.backward(self.conv_out.backward(g))

        # skip gradients, indexed like the forward's `skips` list
        n_skips = 1 + sum(s.stop - s.start for s in self._skip_slices)
        skip_grads: list = [None] * n_skips
        demb = None

        def add_emb(d):
            nonlocal demb
            if d is not None:
                demb = d if demb is None else demb + d

        for block, sl in reversed(list(zip(self.up_blocks, self._up_slices))):
            g, d_skips, d = block.backward(g)
            add_emb(d)
            for idx, ds in zip(range(sl.start, sl.stop), d_skips):
                skip_grads[idx] = ds if skip_grads[idx] is None else skip_grads[idx] + ds
        if self.mid_block is not None:
            g, d = self.mid_block.backward(g)
            add_emb(d)
        for block, sl in reversed(list(zip(self.down_blocks, self._skip_slices))):
            g, d = block.backward(g, skip_grads[sl])
            add_emb(d)
        if skip_grads[0] is not None:
            g = g + skip_grads[0]
        dx = self.conv_in.backward(g)
        if self.config.center_input_sample:
            dx = dx * 2

        if demb is not None:
            self.time_embedding.backward(demb)
            if self.class_embedding is not None:
                self.class_embedding.backward(demb)
        return dx.transpose(0, 3, 1, 2)
