"""Finite-difference gradient checks for the NumPy engine.

Every check runs in float64: the module is converted with `.to(np.float64)`,
fed float64 inputs, and reduced to a scalar with a fixed random projection
L = sum(w * f(x)). The analytic gradients (from `backward`, for the inputs and
for every Parameter) are compared with centred finite differences.

Forward passes mutate the layers' caches, so `backward` always follows a
fresh forward of the unperturbed inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.models.unet_2d import UNet2DModel
from engine.models.unet_2d_blocks import (AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D,
                                          UpBlock2D)
from engine.nn.attention import Attention
from engine.nn.embeddings import TimestepEmbedding
from engine.nn.layers import Conv2d, Dropout, Embedding, GroupNorm, Linear, SiLU
from engine.nn.module import no_grad
from engine.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D

F64 = np.float64
EPS = 1e-6
TOL = 1e-6


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def numerical_grad(f, array, idx=None, eps=EPS):
    """Centred differences of the scalar f() w.r.t. the flat entries `idx`
    (all by default) of `array`, perturbed in place and restored."""
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array), "array must be contiguous to be perturbed in place"
    idx = np.arange(array.size) if idx is None else idx
    out = np.empty(len(idx))
    for n, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        out[n] = (plus - minus) / (2 * eps)
    return out


def rel_error(a, b, floor):
    """max|a-b| / max(max|a|, max|b|, floor): a relative error that stays
    meaningful when the gradient is (near) zero."""
    a, b = np.asarray(a, F64).ravel(), np.asarray(b, F64).ravel()
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), floor))


def flatten(obj):
    """Nested tuples/lists of arrays -> flat list (None kept)."""
    if isinstance(obj, (tuple, list)):
        return [x for item in obj for x in flatten(item)]
    return [obj]


def pick(analytic, max_entries, rng):
    """Flat indices to check: all when small, else the largest-|gradient|
    entry plus random ones."""
    size = analytic.size
    if size <= max_entries:
        return np.arange(size)
    others = rng.choice(size, max_entries - 1, replace=False)
    return np.unique(np.concatenate([[int(np.argmax(np.abs(analytic)))], others]))


def gradcheck(module, forward, backward, inputs, *, max_entries=24, tol=TOL, seed=0, before_forward=None):
    """forward(*inputs) -> array or nested tuple/list of arrays.
    backward(weights) -> input gradients (nested like `inputs`; weights is the
    flat list of output gradients). Checks every input that is a float array
    and every Parameter of `module`, at up to `max_entries` entries each.
    `before_forward()` runs before every forward (e.g. to reseed dropout)."""
    rng = np.random.default_rng(seed)
    before = before_forward or (lambda: None)

    def outputs():
        before()
        return [o for o in flatten(forward(*inputs)) if o is not None]

    ws = [rng.standard_normal(o.shape) for o in outputs()]

    def loss():
        return float(sum(np.sum(w * o) for w, o in zip(ws, outputs())))

    # analytic
    module.zero_grad()
    outputs()
    grads = flatten(backward([w.copy() for w in ws]))
    assert len(grads) == len(inputs), f"backward returned {len(grads)} gradients for {len(inputs)} inputs"
    grads = [None if g is None else np.array(g, dtype=F64) for g in grads]
    param_grads = {name: p.grad.copy() for name, p in module.named_parameters()}
    # Rounding noise of a finite difference ~ 1e-16 * sum|w * f(x)| / eps: a
    # gradient far below that (e.g. exactly zero, like the key bias's in
    # attention) is compared against this floor instead of its own size.
    floor = 1e-3 * max(1.0, float(sum(np.sum(np.abs(w * o)) for w, o in zip(ws, outputs()))))

    failures = []
    checked = 0
    for n, (x, g) in enumerate(zip(inputs, grads)):
        if not (isinstance(x, np.ndarray) and x.dtype == F64):
            continue
        assert g is not None and g.shape == x.shape, f"input {n}: gradient shape {None if g is None else g.shape}"
        idx = pick(g, max_entries, rng)
        err = rel_error(g.ravel()[idx], numerical_grad(loss, x, idx), floor)
        checked += 1
        if err > tol:
            failures.append(f"input {n} {x.shape}: rel err {err:.2e}")
    for name, p in module.named_parameters():
        assert p.data.dtype == F64, f"{name} is {p.data.dtype}"
        g = param_grads[name]
        idx = pick(g, max_entries, rng)
        err = rel_error(g.ravel()[idx], numerical_grad(loss, p.data, idx), floor)
        checked += 1
        if err > tol:
            failures.append(f"param {name} {p.data.shape}: rel err {err:.2e}")
    assert checked, "nothing was checked"
    assert not failures, "gradient mismatch:\n" + "\n".join(failures)
    return checked


def f64(module, rng=None):
    """float64 copy of the module, with GroupNorm affine params moved off
    their (1, 0) init so a mix-up of weight/bias/normalised input shows."""
    module.to(F64)
    rng = rng or np.random.default_rng(123)
    for m in module.modules():
        if isinstance(m, GroupNorm):
            m.weight.data[...] = 1 + 0.3 * rng.standard_normal(m.weight.data.shape)
            m.bias.data[...] = 0.3 * rng.standard_normal(m.bias.data.shape)
    return module


def randn(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def R(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# the helpers themselves
# ---------------------------------------------------------------------------
def test_numerical_grad_of_known_function():
    x = randn(3, 4)
    w = randn(3, 4, seed=2)
    g = numerical_grad(lambda: float(np.sum(w * np.sin(x))), x)
    np.testing.assert_allclose(g.reshape(3, 4), w * np.cos(x), rtol=1e-8, atol=1e-9)


def test_gradcheck_catches_a_wrong_backward():
    lin = f64(Linear(3, 2, rng=R()))
    with pytest.raises(AssertionError, match="gradient mismatch"):
        gradcheck(lin, lin, lambda ws: 1.01 * lin.backward(ws[0]), [randn(4, 3)])


# ---------------------------------------------------------------------------
# basic layers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_linear(bias, shape):
    lin = f64(Linear(4, 6, bias=bias, rng=R()))
    gradcheck(lin, lin, lambda ws: lin.backward(ws[0]), [randn(*shape)])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 1, 2), (3, 2, 0)])
@pytest.mark.parametrize("hw", [(5, 7), (6, 4)])
def test_conv2d(k, stride, pad, bias, hw):
    conv = f64(Conv2d(3, 4, k, stride=stride, padding=pad, bias=bias, rng=R()))
    gradcheck(conv, conv, lambda ws: conv.backward(ws[0]), [randn(2, *hw, 3)])


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (3, 7, 6)])
def test_group_norm(groups, silu, shape):
    gn = f64(GroupNorm(groups, 6, eps=1e-5))
    x = randn(*shape) * 1.5 + 0.5
    gradcheck(gn, lambda x: gn(x, silu=silu), lambda ws: gn.backward(ws[0]), [x])


@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_and_conv_on_a_batch_large_enough_to_split(silu):
    """Large arrays run in two halves on two threads (functional.split_batch)."""
    gn = f64(GroupNorm(4, 64))
    x = randn(2, 32, 64, 64) + 0.5  # 2**18 elements: functional._SPLIT_MIN_ELEMENTS
    gradcheck(gn, lambda x: gn(x, silu=silu), lambda ws: gn.backward(ws[0]), [x], max_entries=8)
    conv = f64(Conv2d(64, 8, 3, padding=1, rng=R()))
    gradcheck(conv, conv, lambda ws: conv.backward(ws[0]), [x], max_entries=8)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape", [
    (5, 7, 7, 64),      # small samples: several per cache block
    (2, 40, 40, 64),    # 102,400 floats a sample: one sample in row blocks
])
def test_group_norm_inference_path_equals_training_path(silu, shape):
    """Under no_grad the affine + SiLU run block by block (functional.
    _affine_silu_blocks); they must give what the gradient-checked training
    path gives."""
    gn = GroupNorm(8, 64)
    gn.weight.data[...] = R().uniform(0.5, 1.5, 64).astype(np.float32)
    gn.bias.data[...] = R().uniform(-0.5, 0.5, 64).astype(np.float32)
    x = (randn(*shape) * 2 + 0.3).astype(np.float32)
    trained = gn(x, silu=silu)
    with no_grad():
        inferred = gn(x, silu=silu)
    np.testing.assert_allclose(inferred, trained, rtol=1e-5, atol=1e-6)


def test_silu():
    act = SiLU()
    gradcheck(act, act, lambda ws: act.backward(ws[0]), [randn(3, 4, 5) * 3])


def test_dropout_training_same_mask():
    drop = Dropout(0.4, rng=R()).train()
    reseed = lambda: setattr(drop, "rng", np.random.default_rng(7))  # noqa: E731
    x = randn(4, 6, 5)
    gradcheck(drop, drop, lambda ws: drop.backward(ws[0]), [x], before_forward=reseed)
    reseed()
    y = drop(x)
    assert 0 < np.mean(y == 0) < 1, "p=0.4 dropout should zero some but not all entries"
    np.testing.assert_allclose(y[y != 0], x[y != 0] / 0.6)


def test_dropout_p0_and_eval_are_identity():
    x = randn(3, 5)
    for drop in (Dropout(0.0, rng=R()).train(), Dropout(0.5, rng=R()).eval()):
        np.testing.assert_array_equal(drop(x), x)
        g = randn(3, 5, seed=3)
        np.testing.assert_array_equal(drop.backward(g), g)
        gradcheck(drop, drop, lambda ws, d=drop: d.backward(ws[0]), [x])


def test_embedding_repeated_indices():
    emb = f64(Embedding(5, 3, rng=R()))
    idx = np.array([[1, 3, 1], [0, 1, 3]])
    gradcheck(emb, emb, lambda ws: (emb.backward(ws[0]), None)[1], [idx])
    # the gradient rows of the unused index must stay zero, repeated ones add up
    emb.zero_grad()
    emb(idx)
    emb.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [1, 3, 0, 2, 0])


# ---------------------------------------------------------------------------
# attention and embeddings
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_groups", [None, 2])
@pytest.mark.parametrize("heads,dim_head", [(1, 4), (3, 2)])
@pytest.mark.parametrize("rescale", [1.0, 1.7])
@pytest.mark.parametrize("residual", [True, False])
def test_attention(norm_groups, heads, dim_head, rescale, residual):
    attn = f64(Attention(6, heads=heads, dim_head=dim_head, norm_num_groups=norm_groups,
                         rescale_output_factor=rescale, residual_connection=residual, rng=R()))
    gradcheck(attn, attn, lambda ws: attn.backward(ws[0]), [randn(2, 3, 4, 6)])


def test_attention_with_dropout_in_training():
    attn = f64(Attention(4, heads=2, dim_head=2, norm_num_groups=2, dropout=0.3, rng=R())).train()

    def reseed():
        attn.to_out[1].rng = np.random.default_rng(11)

    gradcheck(attn, attn, lambda ws: attn.backward(ws[0]), [randn(2, 2, 3, 4)], before_forward=reseed)


def test_timestep_embedding():
    te = f64(TimestepEmbedding(6, 10, rng=R()))
    gradcheck(te, te, lambda ws: te.backward(ws[0]), [randn(3, 6)])


# ---------------------------------------------------------------------------
# resnet, down/upsampling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout", [(4, 4), (4, 6)])
@pytest.mark.parametrize("scale", [1.0, np.sqrt(2.0)])
def test_resnet_block_with_temb(cin, cout, scale):
    block = f64(ResnetBlock2D(cin, cout, temb_channels=5, groups=2, output_scale_factor=scale, rng=R()))
    gradcheck(block, block, lambda ws: block.backward(ws[0]), [randn(2, 4, 5, cin), randn(2, 5, seed=2)])


@pytest.mark.parametrize("cin,cout", [(4, 4), (2, 4)])
def test_resnet_block_without_temb(cin, cout):
    block = f64(ResnetBlock2D(cin, cout, temb_channels=None, groups=2, rng=R()))

    def backward(ws):
        dx, dtemb = block.backward(ws[0])
        assert dtemb is None
        return dx, None

    gradcheck(block, block, backward, [randn(2, 3, 4, cin), None])


def test_resnet_block_with_dropout_in_training():
    block = f64(ResnetBlock2D(4, 6, temb_channels=3, groups=2, dropout=0.3, rng=R())).train()

    def reseed():
        block.dropout.rng = np.random.default_rng(5)

    gradcheck(block, block, lambda ws: block.backward(ws[0]), [randn(2, 4, 4, 4), randn(2, 3, seed=2)],
              before_forward=reseed)


@pytest.mark.parametrize("hw", [(6, 8), (5, 7)])
def test_downsample(hw):
    down = f64(Downsample2D(3, 5, rng=R()))
    gradcheck(down, down, lambda ws: down.backward(ws[0]), [randn(2, *hw, 3)])


def test_upsample():
    up = f64(Upsample2D(3, 4, rng=R()))
    gradcheck(up, up, lambda ws: up.backward(ws[0]), [randn(2, 3, 2, 3)])


# ---------------------------------------------------------------------------
# UNet blocks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls,head_dim", [(DownBlock2D, None), (AttnDownBlock2D, 2)])
@pytest.mark.parametrize("add_downsample", [True, False])
def test_down_block(cls, head_dim, add_downsample):
    block = f64(cls(4, 6, temb_channels=5, num_layers=2, add_downsample=add_downsample, groups=2, eps=1e-5,
                    dropout=0.0, output_scale_factor=1.3, attention_head_dim=head_dim, rng=R()))
    n_states = 2 + add_downsample

    def forward(h, temb):
        out, states = block(h, temb)
        assert len(states) == n_states and states[-1] is out
        return out, states   # the loss sees h and every state (skip)

    gradcheck(block, forward, lambda ws: block.backward(ws[0], ws[1:]), [randn(2, 4, 6, 4), randn(2, 5, seed=2)],
              max_entries=12)


def test_down_block_state_gradients_some_none():
    """UNet2DModel passes None for skips no up block consumed."""
    block = f64(DownBlock2D(4, 4, 3, num_layers=2, add_downsample=True, groups=2, eps=1e-5, dropout=0.0, rng=R()))
    gradcheck(block, lambda h, t: block(h, t)[1][1:], lambda ws: block.backward(ws[1], [None, ws[0], None]),
              [randn(2, 4, 4, 4), randn(2, 3, seed=2)], max_entries=12)


@pytest.mark.parametrize("cls,head_dim", [(UpBlock2D, None), (AttnUpBlock2D, 2)])
@pytest.mark.parametrize("add_upsample", [True, False])
def test_up_block(cls, head_dim, add_upsample):
    # in_channels=4 (skip of the last resnet), prev_output_channel=8, out_channels=6, 3 resnets
    block = f64(cls(4, 8, 6, temb_channels=5, num_layers=3, add_upsample=add_upsample, groups=2, eps=1e-5,
                    dropout=0.0, output_scale_factor=1.2, attention_head_dim=head_dim, rng=R()))
    h = randn(2, 3, 4, 8)
    skips = [randn(2, 3, 4, 4, seed=2), randn(2, 3, 4, 6, seed=3), randn(2, 3, 4, 6, seed=4)]
    temb = randn(2, 5, seed=5)

    def backward(ws):
        dh, dskips, dtemb = block.backward(ws[0])
        assert len(dskips) == 3
        return dh, dskips, dtemb

    gradcheck(block, lambda h, s0, s1, s2, t: block(h, [s0, s1, s2], t), backward, [h, *skips, temb],
              max_entries=12)


@pytest.mark.parametrize("add_attention", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_mid_block(add_attention, num_layers):
    block = f64(UNetMidBlock2D(4, 5, groups=2, eps=1e-5, dropout=0.0, output_scale_factor=1.5,
                               attention_head_dim=2, add_attention=add_attention, num_layers=num_layers, rng=R()))
    gradcheck(block, block, lambda ws: block.backward(ws[0]), [randn(2, 3, 4, 4), randn(2, 5, seed=2)],
              max_entries=12)


# ---------------------------------------------------------------------------
# whole UNet
# ---------------------------------------------------------------------------
TINY_UNET = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=4, attention_head_dim=4, num_class_embeds=3)


@pytest.mark.parametrize("variant", ["attention", "no-attention"])
def test_unet(variant):
    if variant == "attention":
        cfg = dict(TINY_UNET, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:
        cfg = dict(TINY_UNET, down_block_types=("DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False, mid_block_scale_factor=1.4)
    model = f64(UNet2DModel(rng=R(), **cfg))
    names = [n for n, _ in model.named_parameters()]
    has_attention = any(".attentions." in n for n in names)
    assert has_attention == (variant == "attention")
    assert any(n.startswith("class_embedding.") for n in names)
    t = np.array([3, 720])
    labels = np.array([2, 0])
    sample = randn(2, 2, 8, 8)
    n = gradcheck(model, lambda x: model(x, t, labels), lambda ws: model.backward(ws[0]), [sample], max_entries=3,
                  tol=1e-5)
    assert n == 1 + len(names)


def test_unet_per_sample_timesteps_and_labels_matter():
    """Guards the UNet test above: per-sample conditioning reaches the output."""
    model = UNet2DModel(rng=R(), **dict(TINY_UNET, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))).to(F64)
    x = np.repeat(randn(1, 2, 8, 8), 2, axis=0)
    with no_grad():
        same = model(x, np.array([5, 5]), np.array([1, 1]))
        other_t = model(x, np.array([5, 500]), np.array([1, 1]))
        other_label = model(x, np.array([5, 5]), np.array([1, 2]))
    np.testing.assert_allclose(same[0], same[1])
    assert not np.allclose(other_t[0], other_t[1])
    assert not np.allclose(other_label[0], other_label[1])


# ---------------------------------------------------------------------------
# no_grad keeps no caches
# ---------------------------------------------------------------------------
def _cases():
    """(name, module factory, forward(module, x), input)"""
    return [
        ("Linear", lambda: Linear(4, 3, rng=R()), lambda m, x: m(x), randn(2, 4)),
        ("Conv2d", lambda: Conv2d(4, 3, 3, padding=1, rng=R()), lambda m, x: m(x), randn(1, 3, 3, 4)),
        ("Conv2d1x1", lambda: Conv2d(4, 3, 1, rng=R()), lambda m, x: m(x), randn(1, 3, 3, 4)),
        ("GroupNorm", lambda: GroupNorm(2, 4), lambda m, x: m(x, silu=True), randn(1, 3, 3, 4)),
        ("SiLU", SiLU, lambda m, x: m(x), randn(2, 4)),
        ("Attention", lambda: Attention(4, 2, 2, 2, rng=R()), lambda m, x: m(x), randn(1, 2, 2, 4)),
        ("AttentionNoNorm", lambda: Attention(4, 2, 2, None, rng=R()), lambda m, x: m(x), randn(1, 2, 2, 4)),
        ("ResnetBlock2D", lambda: ResnetBlock2D(4, 4, None, groups=2, rng=R()), lambda m, x: m(x, None),
         randn(1, 3, 3, 4)),
    ]


@pytest.mark.parametrize("name,make,fwd,x", _cases(), ids=[c[0] for c in _cases()])
def test_no_grad_forward_keeps_no_cache(name, make, fwd, x):
    m = make().to(F64)
    with no_grad():
        y = fwd(m, x)
    with pytest.raises((TypeError, AttributeError, ValueError)):
        m.backward(np.ones_like(y))


@pytest.mark.parametrize("name,make,fwd,x", _cases(), ids=[c[0] for c in _cases()])
def test_no_grad_forward_drops_a_stale_cache(name, make, fwd, x):
    """A forward with gradients on and no backward, then one under no_grad:
    backward must not silently use the first forward's activations."""
    m = make().to(F64)
    fwd(m, x)
    with no_grad():
        y = fwd(m, 2 * x + 1)
    try:
        m.backward(np.ones_like(y))
    except (TypeError, AttributeError, ValueError):
        return
    pytest.fail(f"{name}: the no_grad forward left the earlier forward's cache in place, and backward "
                "ran on those stale activations instead of raising")


def test_unet_no_grad_forward_keeps_no_cache():
    model = UNet2DModel(rng=R(), **dict(TINY_UNET, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))).to(F64)
    with no_grad():
        y = model(randn(2, 2, 8, 8), np.array([1, 2]), np.array([0, 1]))
    with pytest.raises((TypeError, AttributeError, ValueError)):
        model.backward(np.ones_like(y))
    assert all(not p.grad.any() for p in model.parameters())
