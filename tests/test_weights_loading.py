"""Hostile weights and configs fail at start-up with one clear line, before
anything large is read or allocated: the safetensors header is parsed and
checked (against itself, the file's size and the config's parameter shapes)
before a tensor byte is read, and every config field is checked for its type
and range, and the model for its size, before the model is built. The
shipped weights still load, bit for bit, within a stated memory bound."""
from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine import UNet2DModel
from engine.models import classifier
from engine.io import WeightsError, load_safetensors, save_safetensors
from engine.io import weights as io_weights
from engine.models import unet_2d
from engine.models.unet_2d import CONFIG_NAME, WEIGHTS_NAME, UNet2DConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED = [ROOT / "weights" / "unet", ROOT / "weights" / "fast" / "unet", ROOT / "weights" / "onestep" / "unet"]
MiB = 1024 * 1024

# The memory bound: loading may grow the peak RSS by twice the model's float32
# size (its parameters and the gradient buffer each Parameter keeps; tensors
# are read straight into the parameters) plus this much for the interpreter's
# own allocations; a refused file or config by no more than this.
RSS_ALLOWANCE = 32 * MiB
# address space the subprocesses may map beyond what their imports mapped (which
# varies with the BLAS's per-thread buffers): an unbounded load dies there,
# not the test machine
AS_HEADROOM = 1024 * MiB
needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory through /proc")


# -- writing safetensors files by hand ------------------------------------------------
def read_raw(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_raw(path: Path, header: dict | bytes, data: bytes, total_data: int | None = None) -> Path:
    """header + data; the data section extended (sparse: no disk used) to
    `total_data` bytes when given."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
        if total_data is not None:
            f.truncate(8 + len(h) + total_data)
    return path


def in_file_order(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def shipped_copy(tmp_path: Path, name: str = "unet") -> Path:
    folder = tmp_path / name
    shutil.copytree(SHIPPED[0], folder)
    return folder


def append_tensor(folder: Path, name: str, shape: list, dtype: str = "F32", sparse: bool = False,
                  file: str = WEIGHTS_NAME) -> Path:
    """Add a tensor after the last one: written out, or only declared and the
    file extended to hold it (sparse)."""
    path = folder / file
    header, data = read_raw(path)
    size = math.prod(shape) * {"F64": 8, "F32": 4, "F16": 2}[dtype]
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
    if sparse:
        return write_raw(path, header, data, len(data) + size)
    return write_raw(path, header, data + bytes(size))


def edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def refused(folder: Path, *words: str) -> str:
    """from_pretrained fails with a WeightsError of one line holding `words`."""
    with pytest.raises(WeightsError) as e:
        UNet2DModel.from_pretrained(folder)
    message = str(e.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, message
    return message


# -- the shipped weights -------------------------------------------------------------
@pytest.mark.parametrize("folder", SHIPPED, ids=["base", "fast", "onestep"])
def test_shipped_unet_weights_load_exactly_what_the_file_holds(folder):
    model = UNet2DModel.from_pretrained(folder)
    reference = load_file(str(folder / WEIGHTS_NAME))
    state = model.state_dict()
    assert list(state) == [n for n, _ in model.named_parameters()] and set(state) == set(reference)
    for k, v in reference.items():
        assert state[k].dtype == np.float32
        np.testing.assert_array_equal(state[k], v, err_msg=k)


def test_shipped_classifier_weights_load_exactly_what_the_file_holds():
    model, _ = classifier.load_classifier(ROOT / "weights" / "classifier")
    reference = load_file(str(ROOT / "weights" / "classifier" / "model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(reference)
    for k, v in reference.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("unet_*.safetensors")) +
                         [SHIPPED[0] / WEIGHTS_NAME, ROOT / "weights" / "classifier" / "model.safetensors"],
                         ids=lambda p: p.parent.name + "/" + p.name)
def test_generic_load_reads_what_the_safetensors_library_reads(path):
    ours, theirs = load_safetensors(path), load_file(str(path))
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        np.testing.assert_array_equal(ours[k], v, err_msg=k)


def test_generic_load_round_trips_every_numpy_dtype_and_zero_sized_tensors(tmp_path):
    arrays = {f"a_{d}": np.arange(6).astype(d).reshape(2, 3)
              for d in ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "<u8", "<u4", "<u2", "u1", "?"]}
    arrays |= {"step": np.array(7, np.int64), "empty": np.zeros((0, 4), np.float32)}
    save_safetensors(arrays, tmp_path / "c.safetensors", metadata={"format": "x"})
    loaded, reference = load_safetensors(tmp_path / "c.safetensors"), load_file(str(tmp_path / "c.safetensors"))
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():  # (save_safetensors stores 0-d arrays as shape [1])
        assert loaded[k].dtype == v.dtype and loaded[k].shape == reference[k].shape == (v.shape or (1,)), k
        np.testing.assert_array_equal(loaded[k].reshape(v.shape), v)
    assert io_weights.read_header(tmp_path / "c.safetensors").metadata == {"format": "x"}


def test_float16_weights_still_load_cast_to_float32(tmp_path):
    folder = shipped_copy(tmp_path)
    reference = load_file(str(folder / WEIGHTS_NAME))
    save_safetensors({k: v.astype(np.float16) for k, v in reference.items()}, folder / WEIGHTS_NAME)
    state = UNet2DModel.from_pretrained(folder).state_dict()
    for k, v in reference.items():
        assert state[k].dtype == np.float32
        np.testing.assert_array_equal(state[k], v.astype(np.float16).astype(np.float32))


# -- the parameter shapes, from the config alone ------------------------------------------
def _configs():
    cases = {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("unet_*.json"))}
    cases["shipped"] = json.loads((SHIPPED[0] / CONFIG_NAME).read_text())
    small = dict(sample_size=8, in_channels=2, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=4, attention_head_dim=4, num_class_embeds=3)
    cases["attention_everywhere_no_mid"] = dict(
        small, down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D",) * 2,
        mid_block_type=None, attention_head_dim=None, time_embedding_dim=20)
    cases["three_layers_four_blocks"] = dict(
        small, sample_size=16, block_out_channels=(8, 8, 16, 24), layers_per_block=3, num_class_embeds=None,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attn_norm_num_groups=2)
    return cases


@pytest.mark.parametrize("name, config", _configs().items(), ids=list(_configs()))
def test_parameter_shapes_from_the_config_are_the_models(name, config):
    config = UNet2DConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    model = UNet2DModel(config)
    shapes = unet_2d.parameter_shapes(config)
    assert list(shapes.items()) == [(n, p.shape) for n, p in model.named_parameters()]
    assert unet_2d.parameter_count(config) == model.num_parameters()


@pytest.mark.parametrize("config", [classifier.ClassifierConfig(),
                                    classifier.ClassifierConfig(channels=(4, 8, 8, 4), feature_dim=16,
                                                                norm_num_groups=2, num_classes=3)])
def test_classifier_parameter_shapes_from_the_config_are_the_models(config):
    model = classifier.DigitClassifier(config)
    assert list(classifier.parameter_shapes(config).items()) == [(n, p.shape) for n, p in model.named_parameters()]


# -- hostile weights files ----------------------------------------------------------------
def test_an_extra_tensor_is_refused_by_name(tmp_path):
    folder = shipped_copy(tmp_path)
    append_tensor(folder, "extra.weight", [4, 4])
    refused(folder, str(folder / WEIGHTS_NAME), "unexpected tensor 'extra.weight'",
            "the config's model has no such parameter")


def test_a_missing_tensor_is_refused_by_name(tmp_path):
    folder = shipped_copy(tmp_path)
    header, data = read_raw(folder / WEIGHTS_NAME)
    last = in_file_order(header)[-1]  # dropping the file's last tensor, the rest still tiles the data exactly
    gone = header.pop(last)
    write_raw(folder / WEIGHTS_NAME, header, data[:gone["data_offsets"][0]])
    refused(folder, str(folder / WEIGHTS_NAME), f"tensor {last!r} is missing")


def test_a_wrong_shape_is_refused_naming_both_shapes(tmp_path):
    folder = edit_config(shipped_copy(tmp_path), block_out_channels=[64, 128, 128])  # the same names
    refused(folder, str(folder / WEIGHTS_NAME), "do not match their config",
            "tensor 'conv_in.weight' has shape [32, 1, 3, 3], the config says [64, 1, 3, 3]")


def test_a_wrong_dtype_is_refused_by_name(tmp_path):
    folder = shipped_copy(tmp_path)
    header, data = read_raw(folder / WEIGHTS_NAME)
    header["conv_in.weight"]["dtype"] = "I32"  # same item size: the layout stays consistent
    write_raw(folder / WEIGHTS_NAME, header, data)
    refused(folder, "tensor 'conv_in.weight' is I32, not F32")
    header["conv_in.weight"]["dtype"] = "BF16"  # no NumPy dtype
    write_raw(folder / WEIGHTS_NAME, header, data)
    refused(folder, "tensor 'conv_in.weight' has dtype 'BF16', which this loader does not read")


def test_a_truncated_file_is_refused(tmp_path):
    folder = shipped_copy(tmp_path)
    raw = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(raw[:len(raw) // 2])
    refused(folder, str(folder / WEIGHTS_NAME), "corrupt", "truncated: the header describes 6,162,948 bytes "
            "of tensor data, the file holds 3,070,350")
    (folder / WEIGHTS_NAME).write_bytes(raw[:5000])  # inside the header
    refused(folder, "corrupt", "truncated: header length 22,240 bytes")
    (folder / WEIGHTS_NAME).write_bytes(raw[:3])
    refused(folder, "corrupt", "3 bytes is too short for a header")


def test_an_absurd_header_length_is_refused_without_reading_it(tmp_path):
    folder = shipped_copy(tmp_path)
    raw = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(struct.pack("<Q", 2 ** 62) + raw[8:])
    refused(folder, "corrupt", f"header length {2 ** 62:,} bytes is over this loader's limit of "
            f"{io_weights.MAX_HEADER_BYTES:,}")


@pytest.mark.parametrize("how, says", [
    ("overlap", "tensor 'conv_in.bias' overlaps the tensor before it"),
    ("hole", "4 bytes before tensor 'conv_in.bias' belong to no tensor"),
    ("past_the_end", "truncated: the header describes 10,357,252 bytes of tensor data, the file holds 6,162,948"),
    ("trailing", "4,096 bytes after the last tensor belong to no tensor"),
    ("span", "tensor 'class_embedding.weight': data_offsets [0, 5636] span 5,636 bytes, its F32 shape [11, 128] "
             "needs 5,632"),
    ("negative", "tensor 'class_embedding.weight' has data_offsets [-4, 5632], not [begin, end]"),
    ("duplicate", "the header names 'class_embedding.weight' twice"),
    ("not_json", "the header is not JSON"),
    ("bad_shape", "tensor 'class_embedding.weight' has shape [11, '128'], not a list of non-negative ints"),
    ("bad_metadata", "__metadata__ must map names to strings"),
    ("huge_empty", "tensor 'class_embedding.weight' has shape [0, 4611686018427387904], more than a NumPy array"),
])
def test_inconsistent_offsets_and_headers_are_refused(tmp_path, how, says):
    folder = shipped_copy(tmp_path)
    path = folder / WEIGHTS_NAME
    header, data = read_raw(path)
    first, second = in_file_order(header)[:2]
    a, b = header[first]["data_offsets"], header[second]["data_offsets"]
    raw_header = None
    if how == "overlap":
        header[second]["data_offsets"] = [b[0] - 4, b[1] - 4]
    elif how == "hole":
        header[second]["data_offsets"] = [b[0] + 4, b[1] + 4]
    elif how == "past_the_end":
        last = header[in_file_order(header)[-1]]  # declared 1 Mi elements longer, past the end of the file
        last["shape"] = [math.prod(last["shape"]) + MiB]
        last["data_offsets"][1] += 4 * MiB
    elif how == "trailing":
        data += bytes(4096)
    elif how == "span":
        header[first]["data_offsets"] = [a[0], a[1] + 4]
    elif how == "negative":
        header[first]["data_offsets"] = [-4, a[1]]
    elif how == "duplicate":
        text = json.dumps(header, separators=(",", ":"))
        entry = json.dumps({first: header[first]}, separators=(",", ":"))[1:-1]
        raw_header = (text[:-1] + "," + entry + "}").encode()
    elif how == "not_json":
        raw_header = b"{" + b"x" * 100
    elif how == "bad_shape":
        header[first]["shape"] = [11, "128"]
    elif how == "huge_empty":  # 0 bytes, so the layout holds, but NumPy could not make the array
        header[first]["shape"] = [0, 2 ** 62]
        for name in in_file_order(header):
            header[name]["data_offsets"] = [o - a[1] for o in header[name]["data_offsets"]]
        header[first]["data_offsets"] = [0, 0]
        data = data[a[1]:]
    elif how == "bad_metadata":
        header["__metadata__"] = {"format": 1}
    write_raw(path, raw_header or header, data)
    message = refused(folder, str(path), "corrupt", says)
    with pytest.raises(WeightsError) as generic:  # training checkpoints' path: the same checks
        load_safetensors(path, "checkpoint")
    assert str(generic.value) == message.replace("weights file", "checkpoint", 1)


def test_non_finite_weights_are_refused_by_name(tmp_path):
    folder = shipped_copy(tmp_path)
    arrays = load_file(str(folder / WEIGHTS_NAME))
    arrays["mid_block.resnets.0.conv1.weight"][0, 0, 0, 0] = np.nan
    save_safetensors(arrays, folder / WEIGHTS_NAME)
    refused(folder, "tensor 'mid_block.resnets.0.conv1.weight' holds NaN or inf")


def test_not_a_safetensors_file_is_refused(tmp_path):
    folder = shipped_copy(tmp_path)
    (folder / WEIGHTS_NAME).write_bytes(b"not a safetensors file at all")
    refused(folder, "corrupt or not a safetensors file")
    (folder / WEIGHTS_NAME).unlink()
    (folder / WEIGHTS_NAME).mkdir()
    refused(folder, "weights file not found")


def test_the_classifier_weights_are_checked_before_they_are_read(tmp_path):
    folder = tmp_path / "classifier"
    shutil.copytree(ROOT / "weights" / "classifier", folder)
    append_tensor(folder, "extra.weight", [1024, 1024, 1024], sparse=True, file="model.safetensors")
    with pytest.raises(WeightsError, match="classifier weights .* do not match their config: unexpected tensor "
                                           "'extra.weight'"):
        classifier.load_classifier(folder)
    shutil.copy(ROOT / "weights" / "classifier" / "model.safetensors", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "channels": [16, 32, 64, 64]}))
    with pytest.raises(WeightsError, match=r"tensor 'convs.5.weight' has shape \[32, 64, 3, 3\], the config says "
                                           r"\[64, 64, 3, 3\]"):
        classifier.load_classifier(folder)
    for bad, says in [({"channels": [16, 32, 64, "32"]}, "channels must be 4 positive ints"),
                      ({"feature_dim": 2.0}, "feature_dim must be a positive int"),
                      ({"channels": [4096, 4096, 4096, 4096], "norm_num_groups": 1}, "over this engine's bound")]:
        (folder / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(WeightsError, match=says):
            classifier.load_classifier(folder)


# -- hostile configs --------------------------------------------------------------------
BAD_CONFIGS = [
    # (changes, words the one-line error must hold)
    ({"block_out_channels": [4096, 4096, 4096], "norm_num_groups": 32},
     ["parameters", "over this engine's bound of 100,000,000"]),
    ({"block_out_channels": [8192, 64, 64]}, ["block_out_channels=[8192, 64, 64]", "each in 1..4096"]),
    ({"block_out_channels": [32, 64, 0]}, ["block_out_channels=[32, 64, 0]"]),
    ({"block_out_channels": [32, 60, 64]}, ["60 channels do not split into norm_num_groups=8 groups"]),
    ({"layers_per_block": 100000}, ["layers_per_block=100000", "an int in 1..16"]),
    ({"layers_per_block": "2"}, ["layers_per_block='2'", "an int in 1..16"]),
    ({"layers_per_block": 2.0}, ["layers_per_block=2.0"]),
    ({"layers_per_block": True}, ["layers_per_block=True"]),
    ({"layers_per_block": 0}, ["layers_per_block=0"]),
    ({"num_class_embeds": 1e9}, ["num_class_embeds=1000000000.0", "an int in 1..100000 or null"]),
    ({"num_class_embeds": 10 ** 9}, ["num_class_embeds=1000000000"]),
    ({"attention_head_dim": 0}, ["attention_head_dim=0", "an int in 1..4096 or null"]),
    ({"attention_head_dim": 128}, ["attention_head_dim=128 is more than the 64 channels of the mid block"]),
    ({"norm_eps": float("nan")}, ["norm_eps=nan", "a finite number > 0 and <= 1"]),
    ({"norm_eps": 0}, ["norm_eps=0", "a finite number > 0"]),
    ({"norm_eps": -1e-5}, ["norm_eps=-1e-05"]),
    ({"norm_eps": 10 ** 400}, ["norm_eps=1000"]),
    ({"sample_size": 30}, ["sample_size=30 must be a multiple of 4 for 3 blocks"]),
    ({"sample_size": 10 ** 6}, ["sample_size=1000000", "an int in 1..256 or null"]),
    ({"in_channels": 0}, ["in_channels=0"]),
    ({"out_channels": "1"}, ["out_channels='1'"]),
    ({"time_embedding_dim": 10 ** 7}, ["time_embedding_dim=10000000"]),
    ({"freq_shift": 16}, ["freq_shift=16 must be less than block_out_channels[0] // 2 = 16"]),
    ({"dropout": 1.0}, ["dropout=1.0", "in [0, 1)"]),
    ({"mid_block_scale_factor": float("inf")}, ["mid_block_scale_factor=inf"]),
    ({"downsample_padding": True}, ["downsample_padding=True", "one of [1]"]),
    ({"center_input_sample": 0}, ["center_input_sample=0", "one of [False, True]"]),
    ({"act_fn": "gelu"}, ["act_fn='gelu'", "one of ['silu', 'swish']"]),
    ({"down_block_types": "DownBlock2D"}, ["down_block_types='DownBlock2D'", "a list of 1..8 of"]),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"]}, ["up_block_types="]),
    ({"class_embed_type": "timestep"}, ["class_embed_type='timestep'", "null (only num_class_embeds"]),
    ({"attn_norm_num_groups": 48}, ["attn_norm_num_groups=48"]),
]


@needs_proc
def test_bad_configs_are_refused_naming_the_field_before_anything_is_allocated(tmp_path):
    """Every case in one subprocess whose address space is bounded: a config
    that allocated much before being refused would end in MemoryError there,
    or raise the peak RSS."""
    folders = []
    for i, (changes, _) in enumerate(BAD_CONFIGS):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        shutil.copy(SHIPPED[0] / CONFIG_NAME, folder)
        (folder / WEIGHTS_NAME).symlink_to(SHIPPED[0] / WEIGHTS_NAME)
        folders.append(str(edit_config(folder, **changes)))
    results = run_bounded(LOAD_EACH, *folders)
    for (changes, words), folder, result in zip(BAD_CONFIGS, folders, results):
        assert result["error"] == "WeightsError", (changes, result)
        assert f"model config {folder}/{CONFIG_NAME} is invalid" in result["message"], (changes, result)
        for w in words:
            assert w in result["message"], (changes, result)
        assert result["rss_increase"] <= RSS_ALLOWANCE, (changes, result)


BUILD_EACH = r"""
import resource, sys
from engine import UNet2DConfig, UNet2DModel
with open("/proc/self/status") as f:
    limit = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")) + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for build in [lambda: UNet2DModel(UNet2DConfig(layers_per_block=100000)),
              lambda: UNet2DModel(block_out_channels=(4096,) * 4)]:
    try:
        build()
        print("built")
    except ValueError as e:
        print("ValueError:", e)
"""


@needs_proc
def test_configs_built_in_python_are_checked_too():
    proc = subprocess.run([sys.executable, "-c", BUILD_EACH, str(AS_HEADROOM)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    layers, channels = proc.stdout.splitlines()
    assert layers.startswith("ValueError: UNet2DModel config: layers_per_block=100000 is not allowed"), layers
    assert channels.startswith("ValueError: UNet2DModel config describes a model of") and \
        "over this engine's bound" in channels, channels
    UNet2DModel(UNet2DConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(np.int64(8),),
                             down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4))


# -- memory -----------------------------------------------------------------------------
# Loads each folder given, in a fresh interpreter whose address space is
# bounded, and prints per folder a JSON line: the error (if any), its message,
# and how far the peak RSS rose during the load. The peak is /proc's VmHWM,
# reset before each load (clear_refs "5"): getrusage's ru_maxrss cannot be
# reset and, on Linux, starts from the RSS of the (large) pytest process that
# forked this one.
LOAD_EACH = r"""
import json, resource, sys
from engine import UNet2DModel
from engine.io import WeightsError
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
limit = status("VmSize") + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for folder in sys.argv[2:]:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not resettable here: the peak then includes the imports' (an overestimate)
        pass
    base = status("VmRSS")
    try:
        model = UNet2DModel.from_pretrained(folder)
        result = {"error": None, "parameters": model.num_parameters()}
    except WeightsError as e:
        result = {"error": "WeightsError", "message": str(e)}
    except BaseException as e:
        result = {"error": type(e).__name__, "message": str(e)[:500]}
    model = None
    print(json.dumps({**result, "rss_increase": status("VmHWM") - base}), flush=True)
"""


def run_bounded(script: str, *folders: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", script, str(AS_HEADROOM), *folders], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(folders), proc.stdout
    return results


@needs_proc
def test_loading_the_shipped_weights_stays_within_the_memory_bound():
    """Peak RSS growth <= 2 x the model's float32 size + RSS_ALLOWANCE (a
    process per folder: a second load in one process reuses the memory the
    first freed and would measure low)."""
    for folder in SHIPPED:
        (result,) = run_bounded(LOAD_EACH, str(folder))
        assert result["error"] is None, result
        model_bytes = 4 * result["parameters"]
        assert result["rss_increase"] <= 2 * model_bytes + RSS_ALLOWANCE, result


@needs_proc
def test_a_sparse_4gib_extra_tensor_is_never_read(tmp_path):
    """The probe's file: valid weights plus a declared 4 GiB F32 tensor, the
    file extended to hold it without using disk. Refused from its header, in
    one line, with the peak RSS barely moving, in a process that could not
    have held the tensor anyway."""
    folder = shipped_copy(tmp_path)
    path = append_tensor(folder, "extra.weight", [1024, 1024, 1024], sparse=True)
    assert path.stat().st_size > 4 * 1024 * MiB and path.stat().st_blocks * 512 < 64 * MiB
    (result,) = run_bounded(LOAD_EACH, str(folder))
    assert result["error"] == "WeightsError", result
    assert result["message"] == (f"weights {path} do not match their config: unexpected tensor 'extra.weight' "
                                 f"(the config's model has no such parameter)")
    assert result["rss_increase"] <= RSS_ALLOWANCE, result


@needs_proc
def test_a_sparse_tensor_replacing_a_real_one_is_never_read(tmp_path):
    """Same names, but one declared 4 GiB: its shape is refused from the header."""
    folder = shipped_copy(tmp_path)
    path = folder / WEIGHTS_NAME
    header, data = read_raw(path)
    last = in_file_order(header)[-1]
    start = header[last]["data_offsets"][0]
    header[last] = {"dtype": "F32", "shape": [2 ** 30], "data_offsets": [start, start + 2 ** 32]}
    write_raw(path, header, data[:start], start + 2 ** 32)
    (result,) = run_bounded(LOAD_EACH, str(folder))
    assert result["error"] == "WeightsError", result
    assert f"tensor {last!r} has shape [1073741824], the config says [" in result["message"], result
    assert result["rss_increase"] <= RSS_ALLOWANCE, result
