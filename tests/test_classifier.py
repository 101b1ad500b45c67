"""The evaluation's MNIST classifier: exact gradients (float64 finite
differences), it learns a small synthetic task, weights round-trip through
safetensors + config.json, and missing or corrupt weights fail clearly."""
import json

import numpy as np
import pytest

from engine.evaluation.classifier import (ClassifierConfig, ClassifierTrainConfig, DigitClassifier, cross_entropy,
                               load_classifier, main, predict, prepare, random_shift, save_classifier, train)
from engine.io import WeightsError

TINY = ClassifierConfig(channels=(4, 8, 8, 4), feature_dim=16, norm_num_groups=2)


def blobs(n, seed=0):
    """Synthetic 'digits': class k is a fixed random 8x8 binary stamp (the
    same for every seed) near the centre, jittered by up to 2 pixels, on
    faint noise."""
    stamps = np.random.default_rng(1234).random((10, 8, 8)) < 0.5
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, k in enumerate(y):
        r, c = 10 + rng.integers(-2, 3, 2)
        x[i, r:r + 8, c:c + 8][stamps[k]] = 255
    return x, y.astype(np.int64)


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 10))
    labels = rng.integers(0, 10, 5)
    loss, grad = cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])))
    num = np.zeros_like(logits)
    eps = 1e-6
    for i in np.ndindex(logits.shape):
        lp, lm = logits.copy(), logits.copy()
        lp[i] += eps
        lm[i] -= eps
        num[i] = (cross_entropy(lp, labels)[0] - cross_entropy(lm, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-8)


def test_backward_matches_finite_differences():
    """Whole model in float64: input gradient and sampled parameter gradients."""
    model = DigitClassifier(TINY, rng=np.random.default_rng(1)).to(np.float64)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 28, 28, 1))
    labels = np.array([3, 7])

    def loss():
        return cross_entropy(model(x), labels)[0]

    model.zero_grad()
    _, dlogits = cross_entropy(model(x), labels)
    dx = model.backward(dlogits)
    assert dx.shape == x.shape
    eps = 1e-6

    def numeric(array, flat_idx):
        flat = array.reshape(-1)
        old = flat[flat_idx]
        flat[flat_idx] = old + eps
        plus = loss()
        flat[flat_idx] = old - eps
        minus = loss()
        flat[flat_idx] = old
        return (plus - minus) / (2 * eps)

    for i in rng.choice(x.size, 12, replace=False):
        assert numeric(x, i) == pytest.approx(dx.reshape(-1)[i], rel=1e-5, abs=1e-9)
    for name, p in model.named_parameters():
        for i in rng.choice(p.data.size, min(3, p.data.size), replace=False):
            assert numeric(p.data, i) == pytest.approx(p.grad.reshape(-1)[i], rel=1e-5, abs=1e-9), name


def test_prepare_accepts_uint8_and_pipeline_output():
    u8 = np.full((2, 28, 28), 255, np.uint8)
    np.testing.assert_allclose(prepare(u8), 1.0)
    assert prepare(u8).shape == (2, 28, 28, 1)
    nchw = np.zeros((3, 1, 28, 28), np.float32)
    assert prepare(nchw).shape == (3, 28, 28, 1)
    with pytest.raises(ValueError):
        prepare(np.zeros((2, 3, 28, 28)))


def test_random_shift_moves_content_within_bounds():
    img = np.zeros((50, 28, 28), np.uint8)
    img[:, 14, 14] = 255
    out = random_shift(img, np.random.default_rng(0), max_shift=2)
    ys, xs = np.nonzero(out.reshape(50, 28, 28).max(0))
    assert out.shape == img.shape and (out > 0).sum() == 50  # each pixel kept, moved
    assert ys.min() >= 12 and ys.max() <= 16 and xs.min() >= 12 and xs.max() <= 16
    assert len(set(zip(ys, xs))) > 5


def test_learns_a_synthetic_task():
    """100 steps of batch 32 (~5 s): loss from ~ln 10 to near zero, unseen
    samples classified."""
    x, y = blobs(680)
    cfg = ClassifierTrainConfig(epochs=5, batch_size=32, lr=1e-2, warmup=5, holdout=40, max_shift=0, log_every=10)
    small = ClassifierConfig(channels=(8, 8, 16, 8), feature_dim=32, norm_num_groups=4)
    losses = []
    model, record = train(x, y, cfg, small, log=losses.append)
    assert record["train_images"] == 640 and record["steps"] == 5 * (640 // 32) == len(losses) * 10
    first = float(losses[0].split("loss ")[1].split()[0])
    assert first > 2.0 and record["final_train_loss"] < 0.2
    xt, yt = blobs(100, seed=5)
    probs, feats = predict(model, xt)
    assert feats.shape == (100, 32) and probs.shape == (100, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert np.mean(probs.argmax(1) == yt) >= 0.9


def test_save_load_round_trip(tmp_path):
    model = DigitClassifier(TINY, rng=np.random.default_rng(3))
    save_classifier(model, tmp_path / "c", {"metrics": {"test": {"accuracy": 0.5}}})
    loaded, config = load_classifier(tmp_path / "c")
    assert config["metrics"]["test"]["accuracy"] == 0.5
    assert loaded.config == TINY
    x = blobs(4)[0]
    np.testing.assert_array_equal(predict(model, x)[1], predict(loaded, x)[1])


def test_missing_or_corrupt_weights_fail_clearly(tmp_path):
    with pytest.raises(WeightsError, match="classifier folder not found"):
        load_classifier(tmp_path / "nope")
    folder = save_classifier(DigitClassifier(TINY), tmp_path / "c")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="corrupt"):
        load_classifier(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="not found"):
        load_classifier(folder)
    folder = save_classifier(DigitClassifier(TINY), tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["feature_dim"] = 32  # weights no longer match
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="do not match"):
        load_classifier(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_classifier(folder)


def test_cli_trains_and_records_accuracy(tmp_path):
    x, y = blobs(200)
    xt, yt = blobs(50, seed=9)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "cls"
    assert main(["train", "--data", str(tmp_path / "m.npz"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "50", "--holdout", "50", "--warmup", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {"accuracy", "loss", "per_class_accuracy"} <= set(cfg["metrics"]["test"])
    assert cfg["training"]["steps"] == 3 and "wall_time_s" in cfg["training"] and "command" in cfg["training"]
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
