"""Load DDColor weights from any of the official formats, strictly.

Steps: read the file(s) safely -> canonicalize (unwrap ``params``, strip ``module.``, drop the two stale
``encoder.arch.head_cls.*`` keys) -> detect the config -> check every key and shape against the official
layout -> fold spectral norm -> ``load_state_dict(strict=True)`` into a model built on the meta device.

Spectral norm: the eight spectral-normalised convolutions are stored as ``weight_orig``, ``weight_u`` and
``weight_v``. In eval mode upstream uses ``weight = weight_orig / sigma`` with ``sigma = u . (W v)`` and the
stored u, v (no power iteration). That weight is computed once here, in float32, and loaded as a plain conv
``weight``; the network never carries the u/v buffers.

Memory: ``torch.load(weights_only=True)`` and the safetensors reader read each tensor from the file into its
own buffer, and the model (built on the meta device) takes those tensors over (``assign=True``) without a
copy, so loading needs about one copy of the weights (a dtype or device change converts tensor by tensor).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .arch import DDColor, spectral_norm_layers
from .config import ENCODERS, DDColorConfig, detect_config
from .errors import CheckpointError, UnsupportedModelError

logger = logging.getLogger("ComfyUI-DDColor")

StateDict = dict[str, torch.Tensor]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys of a 4-way classification head removed upstream in 2023 but still present in the released files.
STALE_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")
_PREFIXES = ("module.", "model.")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_REDOWNLOAD = "Delete it and download it again (https://huggingface.co/piddnad/DDColor-models)."


def resolve_weights_file(path: str | Path) -> tuple[Path, dict | None]:
    """The weights file for ``path`` (a file, or a Hugging Face folder) and the folder's config.json, if any."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"DDColor weights not found: '{path}' does not exist. Check the path, or put the "
                              "file into ComfyUI/models/ddcolor.")
    if path.is_dir():
        candidates = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not candidates:
            raise CheckpointError(
                f"DDColor model folder '{path}' has no weights: expected one of {', '.join(HF_WEIGHT_FILES)} "
                "(with config.json, the Hugging Face layout). Put the weights file there, or select the file "
                "itself.")
        config = None
        config_path = path / "config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"'{config_path}' is not valid JSON ({e}). Fix or delete it.") from e
        return candidates[0], config
    return path, None


def _size_text(size: int) -> str:
    """A file size for messages: bytes below 1 MB, else MB with one decimal."""
    return f"{size} bytes" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


def _is_whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_Entry = tuple[torch.dtype, list[int], int, int]  # dtype, shape, begin, end (offsets into the data section)


def _check_safetensors_header(header: object, path: Path, data_size: int) -> dict[str, _Entry]:
    """Every tensor entry of a parsed safetensors header, checked completely.

    Returns ``{key: (dtype, shape, begin, end)}`` with offsets relative to the data section. Raises
    :class:`CheckpointError` naming the file for anything that is not a well-formed header: a header that is
    not a JSON object, entries that are not ``{"dtype", "shape", "data_offsets"}``, unknown dtype names,
    shapes or offsets that are not lists of non-negative whole numbers, a byte span that does not match
    shape x dtype size, offsets past the end of the file, and tensors whose bytes overlap.
    """

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"'{path}' is not a valid .safetensors file: its header {what}. The file is "
                               f"corrupt or was not written by a safetensors library. {_REDOWNLOAD}")

    if not isinstance(header, dict):
        raise bad(f"is a JSON {type(header).__name__}, not an object of tensors")
    metadata = header.get("__metadata__")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad(f"has a __metadata__ that is a {type(metadata).__name__}, not an object")
    entries: dict[str, _Entry] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            found = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise bad(f"describes tensor {key!r} as {found}, not as dtype, shape and data_offsets")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise bad(f"gives tensor {key!r} the dtype {info['dtype']!r}; known dtypes are "
                      f"{', '.join(_SAFETENSORS_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_whole_number(n) and n >= 0 for n in shape):
            raise bad(f"gives tensor {key!r} the shape {shape!r}, not a list of sizes")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_whole_number(n) for n in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise bad(f"gives tensor {key!r} the data_offsets {offsets!r}, not [begin, end] with "
                      "0 <= begin <= end")
        begin, end = offsets
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes != end - begin:
            raise bad(f"gives tensor {key!r} {end - begin} bytes, but shape {shape} of {info['dtype']} needs "
                      f"{nbytes}")
        entries[key] = (dtype, shape, begin, end)
    data_end = max((end for _, _, _, end in entries.values()), default=0)
    if data_end > data_size:
        raise CheckpointError(f"'{path}' is truncated: the header describes {data_end} bytes of tensor data but "
                              f"the file has {data_size}. The download was incomplete. {_REDOWNLOAD}")
    spans = sorted((begin, end, key) for key, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end_a, key_a), (begin_b, _, key_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise bad(f"places tensors {key_a!r} and {key_b!r} on overlapping bytes")
    return entries


def _read_safetensors(path: Path) -> StateDict:
    """Tensors of a safetensors file, each read straight from the file into its own buffer (no second copy)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"'{path}' is not a valid .safetensors file (only {size} bytes). {_REDOWNLOAD}")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 << 20):
            raise CheckpointError(f"'{path}' is not a valid .safetensors file (header length {header_len} "
                                  f"does not fit a {size}-byte file). {_REDOWNLOAD}")
        try:
            header = json.loads(fh.read(header_len))
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
            raise CheckpointError(f"'{path}' has a corrupt .safetensors header ({e}). {_REDOWNLOAD}") from e
        data_start = 8 + header_len
        entries = _check_safetensors_header(header, path, size - data_start)
        tensors: StateDict = {}
        for key, (dtype, shape, begin, stop) in entries.items():
            raw = torch.empty(stop - begin, dtype=torch.uint8)
            fh.seek(data_start + begin)
            if fh.readinto(memoryview(raw.numpy())) != stop - begin:
                raise CheckpointError(f"'{path}' ended early while reading {key!r}. {_REDOWNLOAD}")
            tensors[key] = raw.view(dtype).reshape(shape)
    return tensors


def _read_torch(path: Path) -> object:
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    is_zip = zipfile.is_zipfile(path)
    # a PyTorch checkpoint is a zip archive (torch.save since 1.6) or a pickle (older torch.save, protocol 2+)
    if not is_zip and not magic.startswith((b"PK", b"\x80")):
        raise CheckpointError(
            f"'{path}' ({_size_text(size)}) is not a PyTorch checkpoint: it is neither a zip archive nor a pickle "
            f"(it starts with {magic!r}). Perhaps a web page or another file was saved under this name. "
            f"{_REDOWNLOAD}")
    try:
        # no mmap: file-backed weights can be evicted under memory pressure and re-read from disk every run;
        # torch.load reads one storage at a time into its own buffer, so the peak stays at one copy
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if detail is None:  # not a forbidden object: the bytes are simply not a (complete) pickle
            raise CheckpointError(
                f"Cannot read '{path}' ({_size_text(size)}): it is not a complete PyTorch checkpoint; the file is "
                f"corrupt or incomplete. {_REDOWNLOAD}") from e
        raise CheckpointError(
            f"Refusing to load '{path}': it contains Python objects other than tensors, which could run code "
            f"when loaded ({detail}). Nothing was executed. Only use weights from a source you trust; the "
            "official DDColor files load without this error.") from e
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError, TypeError,
            zipfile.BadZipFile) as e:  # what a cut or garbled file makes torch.load and its unpickler raise
        message = (str(e).splitlines()[0] if str(e) else "").strip().rstrip(".")
        if isinstance(e, KeyError) or not message:  # e.g. KeyError(101): an unknown pickle opcode
            message = f"{type(e).__name__} {message}".strip()
        if "zip archive" in message or "central directory" in message or isinstance(e, EOFError) or not is_zip:
            raise CheckpointError(
                f"Cannot read '{path}' ({_size_text(size)}): {message}. The file is incomplete or corrupt — "
                f"usually an interrupted download (the large DDColor models are 912 MB, the tiny one about "
                f"220 MB). {_REDOWNLOAD}") from e
        raise CheckpointError(f"Cannot read '{path}' ({_size_text(size)}): {message}. The file is corrupt. "
                              f"{_REDOWNLOAD}") from e


def read_state_dict(path: str | Path) -> tuple[StateDict, dict | None, Path]:
    """Read and canonicalize the raw official-format state dict (spectral-norm keys unchanged).

    Returns the state dict, the Hugging Face config.json (if a folder was given) and the weights file.
    """
    file, hf_config = resolve_weights_file(path)
    if file.stat().st_size == 0:
        raise CheckpointError(f"'{file}' is empty (0 bytes), probably a failed download. {_REDOWNLOAD}")
    if file.suffix.lower() == ".safetensors":
        loaded: object = _read_safetensors(file)
    elif file.suffix.lower() in (".pth", ".pt", ".bin", ".ckpt"):
        loaded = _read_torch(file)
    else:
        raise CheckpointError(f"'{file}': unsupported file type '{file.suffix}'; DDColor weights are "
                              f"{', '.join(WEIGHT_SUFFIXES)} files or a Hugging Face folder.")
    return canonicalize(loaded, str(file)), hf_config, file


def canonicalize(loaded: object, source: str) -> StateDict:
    """Unwrap ``{'params': ...}``-style containers, strip ``module.``/``model.`` prefixes, drop stale keys."""
    for _ in range(2):  # e.g. {'state_dict': {'params': ...}} at most
        if isinstance(loaded, Mapping):
            inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
                loaded = inner
    if isinstance(loaded, Mapping) and not loaded:
        raise UnsupportedModelError(f"{source} holds an empty state dict (no tensors at all), so it is not DDColor "
                                    f"weights. {_REDOWNLOAD}")
    if not isinstance(loaded, Mapping):
        raise UnsupportedModelError(f"{source} does not contain a state dict (found {type(loaded).__name__}). "
                                    "Use an official DDColor checkpoint.")
    state: StateDict = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise UnsupportedModelError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                        "this is not a DDColor state dict.")
        while key.startswith(_PREFIXES):  # DDColor's own keys never start with these
            key = key.split(".", 1)[1]
        state[key] = value
    for key in STALE_KEYS:
        state.pop(key, None)
    return state


def expected_layout(model: DDColor) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the official state dict for ``model``'s config (spectral-norm form)."""
    layout = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    for name in spectral_norm_layers(model):
        shape = layout.pop(f"{name}.weight")
        layout[f"{name}.weight_orig"] = shape
        layout[f"{name}.weight_u"] = (shape[0],)
        layout[f"{name}.weight_v"] = (math.prod(shape[1:]),)
    return layout


def _check_layout(state: StateDict, layout: dict[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(set(layout) - set(state))
    unexpected = sorted(set(state) - set(layout))
    wrong = sorted(k for k in set(layout) & set(state) if tuple(state[k].shape) != layout[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if wrong:
            parts.append("wrong shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} != {layout[k]}" for k in wrong[:3]))
        raise CheckpointError(f"{source} does not match the DDColor layout: {'; '.join(parts)}. The file is not an "
                              "unmodified official DDColor checkpoint; re-download it or convert it first.")


def fold_spectral_norm(state: StateDict, names: list[str]) -> StateDict:
    """Replace ``weight_orig/u/v`` by the eval-mode ``weight = weight_orig / (u . W v)``.

    sigma is computed in float64, so the result does not depend on which BLAS kernel (or memory alignment)
    a float32 dot product would get; it differs from upstream's float32 sigma by ~1e-7 relative.
    """
    out = dict(state)
    for name in names:
        w = out.pop(f"{name}.weight_orig")
        u = out.pop(f"{name}.weight_u").double()
        v = out.pop(f"{name}.weight_v").double()
        sigma = torch.dot(u, torch.mv(w.double().reshape(w.shape[0], -1), v))
        out[f"{name}.weight"] = (w.double() / sigma).to(w.dtype)
    return out


def _check_hf_config(hf_config: dict | None, config: DDColorConfig, source: str) -> None:
    if not hf_config:
        return
    named = hf_config.get("encoder_name")
    if named is not None and named != config.encoder_name:
        raise CheckpointError(f"{source}: config.json says encoder_name={named!r} but the weights are "
                              f"{config.encoder_name!r}. Use the config.json that came with these weights.")
    for key in ("num_queries", "num_output_channels", "nf", "num_scales", "dec_layers"):
        if key in hf_config and hf_config[key] != getattr(config, key):
            raise CheckpointError(f"{source}: config.json says {key}={hf_config[key]!r} but the weights have "
                                  f"{getattr(config, key)!r}.")


def load_state_dict_into_model(state: StateDict, source: str = "the state dict",
                               hf_config: dict | None = None) -> DDColor:
    """Build the model matching an official-format state dict and load it strictly (CPU, stored dtype)."""
    config = detect_config(state, source)
    _check_hf_config(hf_config, config, source)
    with torch.device("meta"):
        model = DDColor(config)
    _check_layout(state, expected_layout(model), source)
    folded = fold_spectral_norm(state, spectral_norm_layers(model))
    model.load_state_dict(folded, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DDColor:
    """Load DDColor weights and return an eval-mode model on ``device`` in ``dtype``.

    Accepts the official ``.pth`` (``{'params': state_dict}`` plus two stale ``head_cls`` keys, dropped), a
    plain state dict in ``.pth``/``.pt``/``.bin``, a ``.safetensors`` file, or a Hugging Face folder
    (``config.json`` + ``pytorch_model.bin`` or ``model.safetensors``). Every other key must match exactly.

    Args:
        path: weights file or folder.
        device: where the model runs.
        dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.

    Raises:
        CheckpointError: missing, empty, truncated, unsafe or mismatched weights (the message names the file).
        UnsupportedModelError: the file holds another network.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype}")
    state, hf_config, file = read_state_dict(path)
    model = load_state_dict_into_model(state, f"'{file}'", hf_config)
    model = model.to(device=device, dtype=dtype)
    logger.info("loaded DDColor-%s (%s) from %s on %s as %s", model.config.variant, model.config.encoder_name,
                file, device, dtype)
    return model


__all__ = ["ENCODERS", "load_model", "load_state_dict_into_model", "read_state_dict", "canonicalize"]
