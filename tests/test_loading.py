"""``ddcolor.load_model``: every checkpoint format users have, and every broken file they send us.

Formats (all written here from the tiny synthetic weights, so they hold the same numbers):
the official BasicSR ``.pth`` (``{'params': ...}`` plus the two stale ``head_cls`` keys, in the training
class's key order), plain state dicts as ``.pth`` / ``.pt`` / ``.bin``, ``.safetensors``, Hugging Face folders
(``config.json`` + ``pytorch_model.bin`` or ``model.safetensors``), ``{'params_ema': ...}`` and DataParallel
``module.`` prefixes. Each must give the same network: same ``.config``, same weights, same colours.

Broken inputs must raise :class:`ddcolor.CheckpointError` whose message names the file, and must never run
code hidden in a pickle.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ddcolor
from tests.synthetic_weights import DATA_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
STALE_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
INPUT_SIZE = 64  # smallest sensible multiple of 32: keeps each forward well under a second


# --------------------------------------------------------------------------------------------------- helpers


def _manifest(variant: str) -> dict:
    return json.loads((DATA_DIR / f"manifest_{variant}.json").read_text())


def _official_dict(sd: dict[str, torch.Tensor], variant: str = "tiny") -> dict:
    """What the released ``ddcolor_*.pth`` files hold: BasicSR's ``{'params': ...}``, training-class key
    order, plus the 4-way ``head_cls`` that the current classes no longer have."""
    order = list(_manifest(variant)["state_dict_order_basicsr_class"])
    assert set(order) == set(sd)
    params = {key: sd[key] for key in order}
    c3 = sd["encoder.arch.norm3.weight"].shape[0]
    gen = torch.Generator().manual_seed(66)
    params[STALE_KEYS[0]] = torch.randn(4, c3, generator=gen)
    params[STALE_KEYS[1]] = torch.randn(4, generator=gen)
    return {"params": params}


def _hf_config(variant: str = "tiny") -> dict:
    # the constructor kwargs of the official loaders (SPEC §2), as PyTorchModelHubMixin writes them
    return dict(_manifest(variant)["hparams"])


def _assert_names(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert path.name in message, f"the error does not name the file {path.name!r}: {message}"
    return message


def _test_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.rand(2, 48, 40, 3, generator=gen)


def _ab(model) -> torch.Tensor:
    mi = ddcolor.prepare_input(_test_images(), input_size=INPUT_SIZE, resize_mode="square")
    with torch.inference_mode():
        return ddcolor.predict_ab(model, mi)


def _assert_weights_equal(model, sd: dict[str, torch.Tensor]) -> None:
    """Every tensor the model holds equals the file's tensor of the same name (spectral-norm layers may be
    folded into plain weights at load time, so only compare names the model kept)."""
    state = model.state_dict()
    common = [key for key in state if key in sd]
    assert len(common) >= len(sd) // 2, f"only {len(common)} of {len(sd)} checkpoint keys kept their names"
    for key in common:
        assert torch.equal(state[key].to(sd[key].dtype), sd[key]), key


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_sd(tiny_weights) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_weights))


@pytest.fixture(scope="module")
def reference(tiny_weights):
    model = ddcolor.load_model(tiny_weights)
    return model.config, _ab(model)


@pytest.fixture(scope="module")
def formats_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("formats")


def _write_format(name: str, sd: dict[str, torch.Tensor], tiny_weights: Path, root: Path) -> Path:
    if name == "official_pth":
        path = root / "ddcolor_paper_tiny.pth"
        torch.save(_official_dict(sd), path)
    elif name in ("plain_pth", "plain_pt", "plain_bin"):
        path = root / f"plain.{name.split('_')[1]}"
        torch.save(sd, path)
    elif name == "safetensors":
        path = root / "copy.safetensors"
        path.write_bytes(tiny_weights.read_bytes())
    elif name == "params_ema":
        path = root / "ema.pth"
        torch.save({"params_ema": sd}, path)
    elif name == "module_prefix":
        path = root / "dataparallel.pth"
        torch.save({f"module.{key}": value for key, value in sd.items()}, path)
    elif name == "official_pt_modelscope":
        # ModelScope's pytorch_model.pt: also {'params': ...} with head_cls
        path = root / "pytorch_model.pt"
        torch.save(_official_dict(sd), path)
    elif name == "hf_bin":
        path = root / "ddcolor_paper_tiny_hf_bin"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(_hf_config()))
        torch.save(sd, path / "pytorch_model.bin")
    elif name == "hf_safetensors":
        path = root / "ddcolor_paper_tiny_hf_st"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(_hf_config()))
        save_file(sd, str(path / "model.safetensors"))
    else:
        raise AssertionError(name)
    return path


FORMATS = [
    "official_pth",
    "official_pt_modelscope",
    "plain_pth",
    "plain_pt",
    "plain_bin",
    "safetensors",
    "params_ema",
    "module_prefix",
    "hf_bin",
    "hf_safetensors",
]


# --------------------------------------------------------------------------------------------------- formats


def test_reference_model_is_the_tiny_network(reference, tiny_weights, tiny_sd):
    config, ab = reference
    assert config.variant == "tiny"
    assert config.encoder_name == "convnext-t"
    assert config.num_queries == 100
    assert ab.shape == (2, 2, INPUT_SIZE, INPUT_SIZE)
    assert torch.isfinite(ab).all()
    # synthetic weights give clearly coloured output (SPEC §7: ab spans tens of units); all-zero ab would
    # mean the weights were not used
    assert ab.abs().max() > 1.0
    model = ddcolor.load_model(tiny_weights)
    assert not model.training
    _assert_weights_equal(model, tiny_sd)
    with pytest.raises(FrozenInstanceError):
        model.config.num_queries = 256


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_checkpoint_format_gives_the_same_model(fmt, tiny_sd, tiny_weights, formats_dir, reference):
    path = _write_format(fmt, tiny_sd, tiny_weights, formats_dir)
    model = ddcolor.load_model(path)
    ref_config, ref_ab = reference
    assert model.config == ref_config
    assert not model.training
    _assert_weights_equal(model, tiny_sd)
    ab = _ab(model)
    # bit-identical: the same numbers in another container must not change a single output value
    assert torch.equal(ab, ref_ab), (
        f"{fmt}: colours differ from the .safetensors load (max |dab| {(ab - ref_ab).abs().max().item():.2e})"
    )


def test_load_model_accepts_a_string_path(tiny_weights, reference):
    model = ddcolor.load_model(str(tiny_weights))
    assert model.config == reference[0]


@pytest.mark.slow
def test_the_large_network_is_detected(large_weights):
    config = ddcolor.load_model(large_weights).config
    assert config.variant == "large"
    assert config.encoder_name == "convnext-l"
    assert config.num_queries == 100


def test_error_classes_form_the_documented_hierarchy():
    assert issubclass(ddcolor.DDColorError, ValueError)
    assert issubclass(ddcolor.CheckpointError, ddcolor.DDColorError)
    assert issubclass(ddcolor.UnsupportedModelError, ddcolor.CheckpointError)
    assert issubclass(ddcolor.InputImageError, ddcolor.DDColorError)


# --------------------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_download_says_incomplete_and_to_download_again(suffix, tiny_sd, tmp_path):
    """Official issue #66: a download cut at ~95 % gives 'PytorchStreamReader failed reading zip archive'."""
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(_official_dict(tiny_sd), full)
    else:
        save_file(tiny_sd, str(full))
    data = full.read_bytes()
    path = tmp_path / f"ddcolor_paper_tiny{suffix}"
    path.write_bytes(data[: int(len(data) * 0.95)])
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path).lower()
    assert any(word in message for word in ("incomplete", "truncated", "cut off", "corrupt")), message
    assert "download" in message, message


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ddcolor_evil.pth"
    torch.save({"params": {"encoder.arch.norm0.weight": _RunsCode(marker)}}, path)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)
    assert not marker.exists(), "loading the checkpoint executed code from its pickle"


def test_plain_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ddcolor_evil_legacy.pth"
    with path.open("wb") as fh:
        pickle.dump({"params": _RunsCode(marker)}, fh, protocol=2)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)
    assert not marker.exists(), "loading the checkpoint executed code from its pickle"
    # the payload is live: an unsafe unpickle of the very same file does run it
    with path.open("rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberately unsafe, proves the file above was dangerous
    assert marker.exists()


def test_state_dict_of_another_network_is_unsupported(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ddcolor.UnsupportedModelError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


def test_safetensors_of_another_network_is_unsupported(tmp_path):
    path = tmp_path / "some_upscaler.safetensors"
    save_file({"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_first.bias": torch.zeros(64)}, str(path))
    with pytest.raises(ddcolor.UnsupportedModelError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_empty_file(suffix, tmp_path):
    path = tmp_path / f"ddcolor_paper{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


def test_text_file_renamed_to_pth(tmp_path):
    # what a browser saves when the download link returned an HTML error page
    path = tmp_path / "ddcolor_modelscope.pth"
    path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


@pytest.mark.parametrize("with_config", [False, True])
def test_directory_without_weights(with_config, tmp_path):
    path = tmp_path / "ddcolor_paper_tiny"
    path.mkdir()
    if with_config:
        (path / "config.json").write_text(json.dumps(_hf_config()))
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


def test_missing_file(tmp_path):
    path = tmp_path / "ddcolor_artistic.pth"
    with pytest.raises((ddcolor.CheckpointError, FileNotFoundError)) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "ddcolor_notes.pth"
    torch.save({"params": {"note": "not weights"}}, path)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


MISSING_KEY = "decoder.color_decoder.transformer_cross_attention_layers.4.norm.weight"
EXTRA_KEY = "decoder.color_decoder.extra_head.weight"
RESHAPED_KEY = "decoder.color_decoder.transformer_ffn_layers.2.linear1.weight"


def _broken(kind: str, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    broken = dict(sd)
    if kind == "missing":
        assert MISSING_KEY in broken
        del broken[MISSING_KEY]
        return broken, MISSING_KEY
    if kind == "extra":
        broken[EXTRA_KEY] = torch.zeros(4, 256)
        return broken, EXTRA_KEY
    if kind == "shape":
        assert RESHAPED_KEY in broken
        broken[RESHAPED_KEY] = torch.zeros(1024, 256)  # official: [2048, 256]
        return broken, RESHAPED_KEY
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_one_wrong_key_is_an_error_naming_the_key(kind, suffix, tiny_sd, tmp_path):
    broken, key = _broken(kind, tiny_sd)
    path = tmp_path / f"ddcolor_{kind}{suffix}"
    if suffix == ".safetensors":
        save_file(broken, str(path))
    else:
        torch.save({"params": broken}, path)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path)
    assert key in message, f"the error does not say which key is {kind}: {message}"


# --------------------------------------------------------------------------------------------------- memory

_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import ddcolor
    import safetensors.torch  # noqa: F401  (imports counted in the baseline, not in the load)
    torch.set_num_threads(2)
    # load the CPU kernels' code pages first: they are libtorch's, not the loader's
    x = torch.rand(1, 8, 16, 16)
    y = torch.nn.functional.conv2d(x, torch.rand(8, 8, 3, 3), padding=1).permute(0, 2, 3, 1)
    y = torch.nn.functional.gelu(torch.nn.functional.linear(torch.nn.functional.layer_norm(y, (8,)), torch.rand(8, 8)))
    torch.bmm(y.reshape(1, -1, 8), y.reshape(1, 8, -1)).softmax(-1)
    del x, y
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = ddcolor.load_model(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # a lazily mapped file is only read when used: one tiny forward touches every weight
    with torch.inference_mode():
        model(torch.full((1, 3, 32, 32), 0.5))
    used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "after": after, "used": used, "variant": model.config.variant}))
    """
)


def _peak_load_bytes(path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "official_pth"])
def test_loading_large_model_peaks_below_1_3x_the_weights(fmt, large_weights, tmp_path):
    """8 GB machines: loading a 912 MB model must not hold two copies of it (peak RSS ≤ 1.3× weights), also
    once the weights have been used (a lazily memory-mapped file is counted only when read)."""
    if fmt == "safetensors":
        path = large_weights
    else:
        path = tmp_path / "ddcolor_paper.pth"
        torch.save(_official_dict(load_file(str(large_weights)), "large"), path)
    weight_bytes = large_weights.stat().st_size
    got = _peak_load_bytes(path)
    assert got["variant"] == "large"
    grown = got["after"] - got["before"]
    assert grown <= 1.3 * weight_bytes, (
        f"{fmt}: peak RSS grew by {grown / 2**20:.0f} MiB while loading {weight_bytes / 2**20:.0f} MiB of weights "
        f"({grown / weight_bytes:.2f}x, limit 1.3x)"
    )
    used = got["used"] - got["before"]
    assert used <= 1.3 * weight_bytes, (
        f"{fmt}: peak RSS grew by {used / 2**20:.0f} MiB after loading and one 32x32 forward "
        f"({used / weight_bytes:.2f}x the weights, limit 1.3x)"
    )


# ----------------------------------------------------------------------------- malformed files (hostile tester)


def _safetensors_with_header(path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    """A file with the safetensors framing (8-byte little-endian length, JSON header, data) around ``header``."""
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


_F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED_HEADERS = {
    # what the header holds -> a word the message must contain (besides the file name)
    "entry_is_a_number": ({"a": 5}, "tensor 'a'"),
    "header_is_a_list": ([1, 2, 3], "list"),
    "header_is_a_string": ("weights", "str"),
    "metadata_is_a_list": ({"__metadata__": [1], "a": _F32x2}, "__metadata__"),
    "offsets_are_a_string": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": "ab"}}, "data_offsets"),
    "offsets_negative": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, "data_offsets"),
    "offsets_reversed": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, "data_offsets"),
    "offsets_three": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]}}, "data_offsets"),
    "offsets_floats": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, "data_offsets"),
    "offsets_overlap": ({"a": _F32x2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    "offsets_nested_overlap": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "overlap"),
    "dtype_unknown": ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, "F99"),
    "dtype_not_text": ({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}, "dtype"),
    "shape_not_a_list": ({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, "shape"),
    "shape_negative": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "shape"),
    "shape_text": ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, "shape"),
    "span_does_not_match_shape": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "bytes"),
    "missing_field": ({"a": {"dtype": "F32", "shape": [2]}}, "tensor 'a'"),
    "extra_field": ({"a": {**_F32x2, "offset": 0}}, "tensor 'a'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_malformed_safetensors_header_is_a_checkpoint_error_naming_the_file(case, tmp_path):
    header, word = MALFORMED_HEADERS[case]
    path = _safetensors_with_header(tmp_path / f"ddcolor_{case}.safetensors", header, bytes(64))
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path)
    assert "header" in message, message  # says what is wrong with the file, not that keys are missing
    assert word in message, message
    assert "download" in message, message  # and what to do


def test_safetensors_header_nested_too_deep_is_a_checkpoint_error(tmp_path):
    path = _safetensors_with_header(tmp_path / "ddcolor_deep.safetensors", None, raw_header=b"[" * 200_000)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    _assert_names(err, path)


def test_safetensors_offsets_past_the_end_say_truncated(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}
    path = _safetensors_with_header(tmp_path / "ddcolor_cut.safetensors", header, bytes(100))
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    assert "truncated" in _assert_names(err, path)


def test_safetensors_header_bytes_are_never_read_as_tensor_data(tiny_sd, tmp_path, monkeypatch):
    """A negative offset would point into the header; the file must be refused before any tensor is built."""
    path = tmp_path / "ddcolor_negative.safetensors"
    save_file(tiny_sd, str(path))
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    key = next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][0] == 0)
    info = header[key]
    size = info["data_offsets"][1]
    info["data_offsets"] = [-size, 0]
    _safetensors_with_header(path, header, blob[8 + n :])
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    assert "data_offsets" in _assert_names(err, path)


@pytest.mark.parametrize("first_byte", [0x00, 0x65, 0x7B, 0xFF])
def test_random_bytes_in_pth_say_not_a_pytorch_checkpoint_with_the_size(first_byte, tmp_path):
    gen = torch.Generator().manual_seed(first_byte)
    body = torch.randint(0, 256, (64 * 1024 - 1,), dtype=torch.uint8, generator=gen).numpy().tobytes()
    path = tmp_path / "ddcolor_random.pth"
    path.write_bytes(bytes([first_byte]) + body)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path)
    assert "not a PyTorch checkpoint" in message, message
    assert "65536 bytes" in message, message  # not "0.1 MB" / "0.0 MB"


def test_empty_params_say_the_state_dict_is_empty(tmp_path):
    path = tmp_path / "ddcolor_empty_params.pth"
    torch.save({"params": {}}, path)
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path)
    assert "empty" in message, message
    assert "found dict" not in message, message


def test_corrupt_zip_record_message_reads_cleanly(tiny_sd, tmp_path):
    """A damaged record inside the .pth zip: torch's own sentence ends with '.', ours must not add a second."""
    path = tmp_path / "ddcolor_damaged.pth"
    torch.save(_official_dict(tiny_sd), path)
    data = bytearray(path.read_bytes())
    records = [i for i in range(len(data) - 4) if data[i : i + 4] == b"PK\x03\x04"]
    data[records[10] : records[10] + 2] = b"XX"  # break one local file header
    path.write_bytes(bytes(data))
    with pytest.raises(ddcolor.CheckpointError) as err:
        ddcolor.load_model(path)
    message = _assert_names(err, path)
    assert ".." not in message.replace("'..'", ""), message
    assert "corrupt" in message, message
