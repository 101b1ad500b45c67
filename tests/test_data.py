"""MNIST loaders: .npz and IDX (plain and gzipped), made here by the tests,
and clear errors for bad data."""
import gzip
import struct

import numpy as np
import pytest

from engine.io.data import DataError, from_model_range, load_mnist, to_model_range


def make_split(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_idx_folder(folder, gz):
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    out = {}
    for i, (split, (img_name, lbl_name)) in enumerate(names.items()):
        x, y = make_split(7 + i, seed=i)
        sfx = ".gz" if gz else ""
        write_idx(folder / (img_name + sfx), x, gz)
        write_idx(folder / (lbl_name + sfx), y, gz)
        out[split] = (x, y)
    return out


def test_npz_round_trip(tmp_path):
    x, y = make_split(12)
    xt, yt = make_split(5, seed=1)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    images, labels = load_mnist(tmp_path / "m.npz", "train")
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    assert labels.dtype == np.int64
    images, labels = load_mnist(tmp_path / "m.npz", "test")
    np.testing.assert_array_equal(images, xt)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_plain_and_gzipped(tmp_path, gz):
    expected = write_idx_folder(tmp_path, gz)
    for split in ("train", "test"):
        images, labels = load_mnist(tmp_path, split)
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal(labels, expected[split][1])
    # pointing at one of the image files works too
    suffix = ".gz" if gz else ""
    images, _ = load_mnist(tmp_path / f"train-images-idx3-ubyte{suffix}", "train")
    np.testing.assert_array_equal(images, expected["train"][0])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mnist(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)  # empty folder


def test_wrong_shapes(tmp_path):
    x, y = make_split(4)
    np.savez(tmp_path / "a.npz", x_train=x[:, :14, :14], y_train=y)
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        load_mnist(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y[:3])
    with pytest.raises(DataError, match="labels must have shape"):
        load_mnist(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", images=x)
    with pytest.raises(DataError, match="no x_train/y_train"):
        load_mnist(tmp_path / "c.npz")


def test_labels_out_of_range(tmp_path):
    x, y = make_split(4)
    y = y.astype(np.int64)
    y[2] = 10
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"label\[2\] = 10"):
        load_mnist(tmp_path / "a.npz")


def test_pickled_npz_is_refused(tmp_path):
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "p.npz", x_train=obj, y_train=obj)
    with pytest.raises(DataError):
        load_mnist(tmp_path / "p.npz")


def test_truncated_and_foreign_idx(tmp_path):
    x, y = make_split(3)
    write_idx(tmp_path / "train-images-idx3-ubyte", x, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y, gz=False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="bytes"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="magic"):
        load_mnist(tmp_path)


def test_scaling_round_trip():
    x, _ = make_split(3)
    m = to_model_range(x)
    assert m.shape == (3, 1, 28, 28) and m.dtype == np.float32
    assert m.min() >= -1 and m.max() <= 1
    np.testing.assert_array_equal(from_model_range(m[:, 0]), x)
