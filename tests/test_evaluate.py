"""The evaluation: Fréchet distance against closed forms, nearest-neighbour
search against brute force, class-balanced sampling, and the whole command
end to end on a tiny untrained pipeline, a tiny classifier and synthetic
'MNIST' written by the test."""
import json

import numpy as np
import pytest

from engine.evaluation.classifier import ClassifierConfig, DigitClassifier, save_classifier
from engine.evaluation.evaluate import (balanced_indices, within_class_distance, feature_stats, format_report, frechet_distance, frechet_features,
                             main, nearest_distances, sqrtm_psd)
from engine.models.unet_2d import UNet2DModel
from engine.pipeline import DigitPipeline, SamplingDefaults

TINY_UNET = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
             "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "add_attention": False, "norm_num_groups": 4,
             "num_class_embeds": 11}


def random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# -- Fréchet distance ------------------------------------------------------------
def test_sqrtm_psd_squares_back():
    s = random_spd(6, np.random.default_rng(0))
    r = sqrtm_psd(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-10)
    np.testing.assert_allclose(r, r.T)


def test_zero_for_identical_features():
    f = np.random.default_rng(1).standard_normal((200, 16))
    assert frechet_features(f, f) == pytest.approx(0, abs=1e-8)


def test_diagonal_gaussians_closed_form():
    """Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_general_2x2_closed_form():
    """Non-commuting 2x2 covariances: for a 2x2 PSD M, tr sqrt(M) =
    sqrt(tr M + 2 sqrt(det M)), with M ~ S1 S2."""
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(2, rng), random_spd(2, rng)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    mu = np.array([1.0, -2.0])
    expected = 5.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu, s1, np.zeros(2), s2) == pytest.approx(expected, rel=1e-10)


def test_symmetric_and_grows_with_mean_shift():
    rng = np.random.default_rng(4)
    f1 = rng.standard_normal((300, 8))
    f2 = rng.standard_normal((300, 8)) @ np.diag(rng.uniform(0.5, 2, 8))
    assert frechet_features(f1, f2) == pytest.approx(frechet_features(f2, f1), rel=1e-9)
    shifts = [frechet_features(f1, f2 + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:]))
    # a pure shift by s in every one of 8 dims adds exactly 8 s^2
    assert frechet_features(f1, f1 + 1.5) == pytest.approx(8 * 1.5 ** 2, rel=1e-9)


def test_rank_deficient_covariances_do_not_break():
    """Fewer samples than dimensions (small --per-class): finite, >= 0."""
    rng = np.random.default_rng(5)
    f1, f2 = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 1
    mu, cov = feature_stats(f1)
    assert cov.shape == (32, 32) and np.linalg.matrix_rank(cov) <= 9
    d = frechet_features(f1, f2)
    assert np.isfinite(d) and d > 0


# -- sampling and nearest neighbours ------------------------------------------------
def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(6)
    pool = rng.random((300, 784), dtype=np.float32)
    q = np.concatenate([rng.random((7, 784), dtype=np.float32), pool[[5, 17]]])
    d, arg = nearest_distances(q, pool, chunk=4)
    brute = np.sqrt(((q[:, None, :].astype(np.float64) - pool[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d, brute.min(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(arg, brute.argmin(1))
    assert d[-2] == d[-1] == 0 and arg[-1] == 17
    exclude = np.array([-1] * 7 + [5, 17])  # copies must not find themselves
    d2, arg2 = nearest_distances(q, pool, exclude=exclude)
    brute[7, 5] = brute[8, 17] = np.inf
    np.testing.assert_allclose(d2, brute.min(1), rtol=1e-9)
    assert arg2[-2] != 5 and arg2[-1] != 17


def test_within_class_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.random((12, 784))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    got = within_class_distance(x, labels)
    for k, v in got.items():
        xs = x[labels == int(k)]
        pairs = [np.linalg.norm(a - b) for i, a in enumerate(xs) for j, b in enumerate(xs) if i != j]
        assert v == pytest.approx(np.mean(pairs), rel=1e-9)
    assert set(got) == {"0", "1", "2", "3"}
    same = within_class_distance(np.repeat(x[:1], 4, axis=0), np.zeros(4, int))
    assert same["0"] == pytest.approx(0.0, abs=1e-6)  # collapsed: no variety


def test_balanced_indices():
    labels = np.repeat(np.arange(10), 5)
    rng = np.random.default_rng(0)
    idx = balanced_indices(labels, 3, rng)
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(10), 3))
    assert len(set(idx)) == 30
    assert balanced_indices(labels, 6, rng) is None
    sub = balanced_indices(labels, 2, rng, candidates=np.arange(0, 50, 2))
    assert sub is None or np.all(sub % 2 == 0)


# -- end to end ------------------------------------------------------------------------
def fake_mnist(path, n_train=300, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    def split(n):
        y = np.arange(n) % 10
        x = (rng.random((n, 28, 28)) * 80).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 4 + 2 * k: 6 + 2 * k, 6:22] = 255
        return x, y
    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def save_tiny_diffusion(folder, steps: int) -> UNet2DModel:
    """A tiny DDPM-schedule pipeline (random weights) sampling `steps` steps by default, saved to folder."""
    unet = UNet2DModel(**TINY_UNET, rng=np.random.default_rng(0))
    DigitPipeline(unet, {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"},
                  SamplingDefaults(num_inference_steps=steps)).save_pretrained(folder)
    return unet


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    unet = save_tiny_diffusion(d / "pipe", 3)
    DigitPipeline(unet, {"_class_name": "TCDScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                         "prediction_type": "epsilon", "clip_sample": True},
                  SamplingDefaults(scheduler="tcd", num_inference_steps=2, guidance_scale=1.0,
                                   timesteps={"2": [999, 299]}, eta=0.3)).save_pretrained(d / "student")
    clf = DigitClassifier(ClassifierConfig(channels=(4, 8, 8, 4), feature_dim=16, norm_num_groups=2),
                          rng=np.random.default_rng(1))
    save_classifier(clf, d / "cls", {"training": {"train_images": 250}, "metrics": {"test": {"accuracy": 0.5}}})
    fake_mnist(d / "mnist.npz")
    return d


def test_end_to_end_writes_every_field(setup, tmp_path, capsys):
    d = setup
    out = tmp_path / "report.json"
    rc = main(["--weights", str(d / "pipe"), "--classifier", str(d / "cls"), "--data", str(d / "mnist.npz"),
               "--per-class", "2", "--steps", "2", "--batch", "8", "--json", str(out), "--quiet"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["n"] == 20 and r["sampler"] == {"scheduler": "dpm", "steps": 2, "guidance_scale": 2.0, "seed": 0,
                                             "timesteps": "evenly spaced", "seeds": "0..19, class-major"}
    g = r["generated"]
    assert 0 <= g["accuracy"] <= 1 and 0 <= g["mean_confidence"] <= 1
    assert set(g["per_class_accuracy"]) == set(g["per_class_confidence"]) == {str(k) for k in range(10)}
    assert np.sum(g["confusion"]) == 20 and np.all(np.sum(g["confusion"], axis=1) == 2)
    fr = r["frechet"]
    assert fr["generated_vs_real"] >= 0 and fr["real_vs_real"] > 0
    assert fr["ratio"] == pytest.approx(fr["generated_vs_real"] / fr["real_vs_real"])
    assert "x_train[250:]" in fr["floor_sample"]
    m = r["memorisation"]
    assert m["pool"] == "300 training images"
    for key in ("generated_nn", "real_test_nn", "held_out_nn"):
        assert 0 <= m[key]["min"] <= m[key]["median"]
    assert m["held_out_nn"]["min"] > 0  # held-out digits did not find themselves in the pool
    assert 0 <= m["near_copy_fraction"] <= 1 and 0 <= m["held_out_near_copy_fraction"] <= 1
    assert r["classifier_test_accuracy"] == 0.5 and r["timing"]["generate_s"] >= 0
    div = r["diversity"]
    assert div["generated"] > 0 and div["real_test"] > 0
    assert div["ratio"] == pytest.approx(div["generated"] / div["real_test"])
    assert set(div["per_class_ratio"]) == {str(k) for k in range(10)}
    text = capsys.readouterr().out
    assert text == format_report(r) + "\n"
    for words in ("conditional accuracy", "Fréchet distance", "real vs real (floor)", "ratio", "near-copies",
                  "diversity"):
        assert words in text


def test_same_seed_same_report(setup, tmp_path):
    d = setup
    args = ["--weights", str(d / "pipe"), "--classifier", str(d / "cls"), "--data", str(d / "mnist.npz"),
            "--per-class", "2", "--steps", "1", "--nn-pool", "100", "--quiet"]
    main([*args, "--json", str(tmp_path / "a.json")])
    main([*args, "--json", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    a.pop("timing"), b.pop("timing")
    assert a == b and a["memorisation"]["pool"] == "100 training images (random subset)"


def test_clear_errors(setup, tmp_path, capsys):
    d = setup
    base = ["--weights", str(d / "pipe"), "--classifier", str(d / "cls"), "--per-class", "2", "--quiet"]
    assert main([*base, "--data", str(tmp_path / "none.npz")]) == 2
    assert "MNIST data not found" in capsys.readouterr().err
    assert main([*base, "--data", str(d / "mnist.npz"), "--classifier", str(tmp_path / "nocls")]) == 2
    assert "classifier folder not found" in capsys.readouterr().err
    assert main([*base, "--data", str(d / "mnist.npz"), "--weights", str(tmp_path / "nopipe")]) == 2
    assert "weights folder not found" in capsys.readouterr().err
    assert main([*base, "--data", str(d / "mnist.npz"), "--per-class", "50"]) == 2
    assert "too few" in capsys.readouterr().err


def student_reports(d, tmp_path, variants: dict[str, list[str]]) -> tuple[list[str], dict[str, dict]]:
    """The student's arguments, and its report (less timing) for each named variant of them."""
    base = ["--weights", str(d / "student"), "--classifier", str(d / "cls"), "--data", str(d / "mnist.npz"),
            "--per-class", "2", "--nn-pool", "100", "--quiet"]
    reports = {}
    for name, extra in variants.items():
        assert main([*base, *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        reports[name].pop("timing")
    return base, reports


def test_a_students_tuned_schedule_is_used_and_reported_and_can_be_overridden(setup, tmp_path, capsys):
    base, reports = student_reports(setup, tmp_path, {
        "tuned": [], "same": ["--timesteps", "999,299"], "other": ["--timesteps", "999,499"],
        "three": ["--timesteps", "999,499,99"]})
    assert reports["tuned"]["sampler"]["timesteps"] == [999, 299]
    assert reports["tuned"] == reports["same"]
    assert reports["other"]["sampler"]["timesteps"] == [999, 499]
    assert reports["other"]["frechet"] != reports["tuned"]["frechet"]  # other images
    assert reports["three"]["sampler"]["steps"] == 3
    assert "[999, 299]" in capsys.readouterr().out
    assert main([*base, "--timesteps", "999,500"]) == 2
    assert "not on the distillation grid" in capsys.readouterr().err
    assert main([*base, "--timesteps", "999,299", "--steps", "3"]) == 2
    assert "2 timesteps given for 3 steps" in capsys.readouterr().err


def test_a_students_eta_is_reported_and_can_be_overridden(setup, tmp_path, capsys):
    base, reports = student_reports(setup, tmp_path, {
        "own": [], "same": ["--eta", "0.3"], "ddim": ["--eta", "0"], "lcm": ["--scheduler", "lcm"]})
    assert reports["own"]["sampler"]["eta"] == 0.3 and reports["own"] == reports["same"]
    assert reports["ddim"]["sampler"]["eta"] == 0.0 and reports["ddim"]["frechet"] != reports["own"]["frechet"]
    assert "eta" not in reports["lcm"]["sampler"] and reports["lcm"]["sampler"]["timesteps"] == "evenly spaced"
    assert "tcd, 2 steps [999, 299], eta 0.3," in capsys.readouterr().out
    assert main([*base, "--eta", "1.5"]) == 2
    assert "eta must be a number in [0, 1]" in capsys.readouterr().err


def test_several_seeds_give_one_report_each_and_their_mean(setup, tmp_path, capsys):
    d = setup
    base = ["--weights", str(d / "pipe"), "--classifier", str(d / "cls"), "--data", str(d / "mnist.npz"),
            "--per-class", "2", "--steps", "1", "--nn-pool", "100", "--quiet"]
    assert main([*base, "--seed", "0,7", "--json", str(tmp_path / "both.json")]) == 0
    both = json.loads((tmp_path / "both.json").read_text())
    singles = []
    for seed in (0, 7):
        assert main([*base, "--seed", str(seed), "--json", str(tmp_path / f"{seed}.json")]) == 0
        singles.append(json.loads((tmp_path / f"{seed}.json").read_text()))
    assert both["seeds"] == [0, 7]
    for got, want in zip(both["reports"], singles):
        got.pop("timing"), want.pop("timing")
        assert got == want  # each seed set's report is the one it gets alone
    ratios = [r["frechet"]["ratio"] for r in singles]
    assert both["mean"]["frechet_ratio"] == pytest.approx(sum(ratios) / 2)
    assert both["mean"]["accuracy"] == pytest.approx(sum(r["generated"]["accuracy"] for r in singles) / 2)
    out = capsys.readouterr().out
    assert out.count("digitgen evaluation:") == 4 and "\n  mean" in out
    with pytest.raises(SystemExit):  # argparse: "expected comma-separated integers"
        main([*base, "--seed", "0,x"])
    assert "comma-separated integers" in capsys.readouterr().err
