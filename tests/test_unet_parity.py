"""UNet2DModel against diffusers, from fixtures recorded by
tools/make_unet_fixtures.py (no torch needed here): same state-dict keys, same
forward output, same gradients of L = sum(w * output) w.r.t. the input and
every parameter, in float32 to 1e-4 relative."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine import UNet2DModel, no_grad
from engine.models.runner import InferenceRunner
from engine.nn import runtime as F
from engine.models.unet_2d import WEIGHTS_NAME

FIXTURES = Path(__file__).parent / "fixtures"
CASES = ["attn_class", "plain", "shipped_like"]


def rel_err(ours: np.ndarray, ref: np.ndarray, scale: float) -> float:
    """max |ours - ref| over the larger of max |ref| and a floor. The floor
    (1e-3 of the largest gradient of the model) keeps gradients that are zero
    in exact arithmetic (e.g. attention key biases, which softmax cancels)
    from turning float32 round-off into a huge relative error."""
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), scale))


def load_case(name):
    cfg = json.loads((FIXTURES / f"unet_{name}.json").read_text())
    arrays = load_file(str(FIXTURES / f"unet_{name}.safetensors"))
    model = UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    return model, params, arrays


@pytest.mark.parametrize("name", CASES)
def test_state_dict_keys_and_shapes_match_diffusers(name):
    model, params, _ = load_case(name)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in params.items()}
    assert ours == theirs


@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_match_diffusers(name):
    model, params, a = load_case(name)
    model.load_state_dict(params)
    labels = a.get("class_labels")

    out = model(a["input"], a["timesteps"], labels)
    assert out.dtype == np.float32
    assert rel_err(out, a["output"], 1e-6) < 1e-4

    model.zero_grad()
    dx = model.backward(a["loss_weights"])
    assert dx.dtype == np.float32
    assert rel_err(dx, a["grad/input"], 1e-6) < 1e-4

    floor = 1e-3 * max(np.abs(v).max() for k, v in a.items() if k.startswith("grad/"))
    errors = {k: rel_err(p.grad, a["grad/" + k], floor) for k, p in model.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"{worst}: {errors[worst]:.2e}"


def test_no_grad_forward_matches_grad_forward():
    model, params, a = load_case("attn_class")
    model.load_state_dict(params)
    with_grad = model(a["input"], a["timesteps"], a["class_labels"])
    with no_grad():
        without = model(a["input"], a["timesteps"], a["class_labels"])
    # inference fuses SiLU as y / (1 + exp(-y)) instead of y * sigmoid(y): same to rounding
    np.testing.assert_allclose(with_grad, without, rtol=1e-5, atol=1e-6)


def test_precomputed_model_matches_live_and_follows_loaded_weights():
    """precompute_for_inference() computes conv matrices and upsample phase kernels: the
    output must be bit-identical, and load_state_dict must refresh them."""
    model, params, a = load_case("attn_class")
    model.load_state_dict(params)
    inputs = a["input"], a["timesteps"], a["class_labels"]
    with no_grad():
        live = model(*inputs)
        model.eval().precompute_for_inference()
        np.testing.assert_array_equal(model(*inputs), live)

        other = {k: v * np.float32(0.9) for k, v in params.items()}
        model.load_state_dict(other)  # still precomputed, on the new weights
        assert model.precomputed
        precomputed_other = model(*inputs)
        model.drop_precomputed()
        np.testing.assert_array_equal(precomputed_other, model(*inputs))
        assert not np.array_equal(precomputed_other, live)

        model.precompute_for_inference().train()  # training drops the derived copies
        assert not any(m.precomputed for m in model.modules())


def test_per_sample_timesteps_and_labels_are_independent():
    """Each row of a batch depends only on its own sample, timestep and label."""
    model, params, a = load_case("attn_class")
    model.load_state_dict(params)
    with no_grad():
        batched = model(a["input"], a["timesteps"], a["class_labels"])
        for i in range(len(a["input"])):
            alone = model(a["input"][i:i + 1], a["timesteps"][i:i + 1], a["class_labels"][i:i + 1])
            np.testing.assert_array_equal(alone[0], batched[i])


@pytest.mark.parametrize("join", [False, True])
@pytest.mark.parametrize("shape", [(5, 7, 7), (3, 28, 28), (2, 40, 40)])
def test_conv_tiles_cover_the_output_once_and_cut_samples_by_shape_only(shape, join):
    """runtime.tiles: every (sample, row) once; a tile stays within the
    byte budget unless it is one band of one sample; bands do not depend on
    the batch size (they decide GEMM heights, hence a sample's bits)."""
    B, H, W = shape
    row_bytes = 9 * 64 * 4
    ts = F.tiles(B, H, W, row_bytes, join=join)
    seen = np.zeros((B, H), int)
    for b0, b1, h0, h1 in ts:
        seen[b0:b1, h0:h1] += 1
        assert (b1 - b0 == 1) or (b1 - b0) * (h1 - h0) * W * row_bytes <= F.TILE_BYTES
    np.testing.assert_array_equal(seen, 1)
    bands = lambda n: sorted({(h0, h1) for *_, h0, h1 in F.tiles(n, H, W, row_bytes, join=join)})  # noqa: E731
    assert bands(1) == bands(B) == bands(64)
    if join and H * W * row_bytes * 2 <= F.TILE_BYTES:
        assert any(b1 - b0 > 1 for b0, b1, *_ in ts)  # small samples do get joined


@pytest.mark.parametrize("precomputed", [False, True])
def test_large_inference_batches_run_in_shards_with_the_same_bits(monkeypatch, precomputed):
    """Inference batches of SHARD_MIN_BATCH or more go through the network in
    per-thread shards and chunks (models.runner.InferenceRunner). Every row must be
    bit-identical to that sample run alone and to the unsharded batch, in
    batch order, with its own timestep and label."""
    model, params, a = load_case("attn_class")
    model.load_state_dict(params)
    model.eval().precompute_for_inference() if precomputed else model.eval()
    run = InferenceRunner(model)
    rng = np.random.default_rng(5)
    B = 7  # uneven shards, several chunks each
    x = rng.standard_normal((B,) + a["input"].shape[1:]).astype(np.float32)
    t = rng.integers(0, 1000, B)
    y = rng.integers(0, 11, B)
    monkeypatch.setattr(F, "SHARD_CHUNK", 2)
    calls = []
    real = F.run_sharded
    monkeypatch.setattr(F, "run_sharded", lambda fn, n: calls.append(n) or real(fn, n))
    sharded = run(x, t, y)
    assert calls == [B]
    for i in range(B):
        np.testing.assert_array_equal(run(x[i:i + 1], t[i:i + 1], y[i:i + 1])[0], sharded[i])
    # a scalar timestep and label are broadcast before the batch is cut
    np.testing.assert_array_equal(run(x, 417, 3)[4], run(x[4:5], 417, 3)[0])
    monkeypatch.setattr(F, "SHARD_MIN_BATCH", B + 1)
    np.testing.assert_array_equal(run(x, t, y), sharded)
    with no_grad():
        np.testing.assert_array_equal(model(x, t, y), sharded)  # the model itself never shards
    assert calls == [B, B]


# -- weights round trip with diffusers ---------------------------------------
RT = FIXTURES / "roundtrip"


def test_folder_saved_by_diffusers_loads_and_matches():
    exp = load_file(str(RT / "expected.safetensors"))
    model = UNet2DModel.from_pretrained(RT / "diffusers_saved")
    with no_grad():
        out = model(exp["input"], exp["timesteps"], exp["class_labels"])
    assert rel_err(out, exp["diffusers_saved/output"], 1e-6) < 1e-4


def test_folder_saved_here_is_what_diffusers_loaded(tmp_path):
    """The script saved a seeded model with our save_pretrained and loaded it
    in diffusers; saving the same model now must give the same tensors and
    config, and our output on it must match what diffusers computed."""
    cfg = json.loads((FIXTURES / "unet_attn_class.json").read_text())
    model = UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}, rng=np.random.default_rng(4))
    model.save_pretrained(tmp_path)
    committed = load_file(str(RT / "ours_saved" / WEIGHTS_NAME))
    fresh = load_file(str(tmp_path / WEIGHTS_NAME))
    assert committed.keys() == fresh.keys()
    for k in committed:
        np.testing.assert_array_equal(committed[k], fresh[k])
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((RT / "ours_saved" / "config.json").read_text())

    exp = load_file(str(RT / "expected.safetensors"))
    with no_grad():
        out = UNet2DModel.from_pretrained(tmp_path)(exp["input"], exp["timesteps"], exp["class_labels"])
    assert rel_err(out, exp["ours_saved/output"], 1e-6) < 1e-4
