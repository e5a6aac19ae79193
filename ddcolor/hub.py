"""The four official DDColor checkpoints and a safe download of them from the Hugging Face Hub.

``download_official(name, dest_dir)`` fetches ``name`` from ``piddnad/DDColor-models`` into ``dest_dir``:

* the download goes to a hidden staging folder inside ``dest_dir`` (so an interrupted 900 MB download can
  resume and is never listed as a model), is checked (size plus a readable archive / header), and only then
  moved to ``dest_dir/<name>``; a truncated or corrupt file is deleted and reported, never left as if valid;
* ``HF_ENDPOINT`` (a mirror such as https://hf-mirror.com) and ``HF_HUB_OFFLINE`` are honoured, because the
  download goes through ``huggingface_hub.hf_hub_download``;
* when the network is off or blocked, :class:`~ddcolor.errors.CheckpointError` says which file to get, from
  which URL, where to put it, and how to use a mirror.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

logger = logging.getLogger("ComfyUI-DDColor")

HF_REPO = "piddnad/DDColor-models"
DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_HINT = "https://hf-mirror.com"
STAGING_DIRNAME = ".ddcolor-download"
"""Hidden folder inside the destination where downloads are assembled and checked."""

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(bytes_done, bytes_total_or_None)``."""


@dataclass(frozen=True)
class OfficialModel:
    """One released checkpoint of ``piddnad/DDColor-models``."""

    filename: str
    variant: str
    """``"large"`` (ConvNeXt-L encoder) or ``"tiny"`` (ConvNeXt-T)."""
    approx_size_mb: int
    """Published size in MB (10^6 bytes): 912 for the ConvNeXt-L files, about 220 for the tiny one."""
    description: str
    repo_id: str = HF_REPO

    @property
    def min_size_bytes(self) -> int:
        """A complete file is never smaller than this (90 % of the published size)."""
        return int(self.approx_size_mb * 0.90 * 1_000_000)


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    m.filename: m
    for m in (
        OfficialModel(
            "ddcolor_modelscope.pth", "large", 912,
            "ModelScope release: the most natural colours for old photos (recommended).",
        ),
        OfficialModel("ddcolor_paper.pth", "large", 912, "The ICCV 2023 paper model, trained on ImageNet."),
        OfficialModel("ddcolor_artistic.pth", "large", 912, "More vivid, saturated colours (extra training data)."),
        OfficialModel("ddcolor_paper_tiny.pth", "tiny", 220, "Small ConvNeXt-T model: fastest, for CPU or low VRAM."),
    )
}
"""Official checkpoint name -> :class:`OfficialModel`."""


def hub_endpoint() -> str:
    """The Hub address in use (``HF_ENDPOINT`` if set)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def official_url(name: str, endpoint: str | None = None) -> str:
    """Direct download address of an official checkpoint."""
    model = _official(name)
    return f"{(endpoint or hub_endpoint()).rstrip('/')}/{model.repo_id}/resolve/main/{model.filename}"


def _official(name: str) -> OfficialModel:
    try:
        return OFFICIAL_MODELS[name]
    except KeyError:
        raise CheckpointError(
            f"{name!r} is not an official DDColor checkpoint; the downloadable ones are "
            f"{', '.join(OFFICIAL_MODELS)}. Put other weights in the ddcolor models folder yourself."
        ) from None


def manual_download_hint(name: str, dest_dir: str | os.PathLike) -> str:
    """What to do by hand: which file, from where, where to put it, and the mirror tip."""
    model = _official(name)
    return (
        f"Download {model.filename} (~{model.approx_size_mb} MB) yourself from {official_url(name)} "
        f"(or https://huggingface.co/{model.repo_id}), put it in {Path(dest_dir)} and refresh ComfyUI (press R). "
        f"If huggingface.co is slow or blocked (e.g. in mainland China), set the environment variable "
        f"HF_ENDPOINT={MIRROR_HINT} before starting ComfyUI and try again."
    )


def verify_checkpoint_file(path: str | os.PathLike, min_size: int = 0) -> None:
    """Cheap completeness check of a weights file without reading all of it.

    ``.safetensors``: the header parses and the file is as long as the header says. Other files: the PyTorch
    zip archive opens (its central directory sits at the end, so a truncated file fails) with
    ``weights_only=True``; legacy non-zip pickles are read fully (still ``weights_only=True``).

    Raises:
        CheckpointError: empty, too small, truncated or unreadable; the message names the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc}).") from exc
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): delete it and download it again.")
    if size < min_size:
        raise CheckpointError(
            f"{path} is only {size / 2**20:.1f} MB but should be at least {min_size / 2**20:.0f} MB: "
            "the download was cut short. Delete it and download it again."
        )
    if path.suffix.lower() in (".safetensors", ".sft"):
        _verify_safetensors(path, size)
        return
    import pickle
    import zipfile

    import torch

    try:
        if zipfile.is_zipfile(path):
            torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Delete it and download it again."
        ) from exc


def _verify_safetensors(path: Path, size: int) -> None:
    import json
    import struct

    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} does not fit a {size}-byte file")
            header = json.loads(fh.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise CheckpointError(
            f"{path} is not a readable .safetensors file ({exc}). Delete it and download it again."
        ) from exc
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes, the header promises {8 + header_len + end}. "
            "Delete it and download it again."
        )


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the download did not work" (network, HTTP, offline mode, disk)."""
    errors: list[type[BaseException]] = [OSError, ValueError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors += [c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError" and c is not HfHubHTTPError]
    except ImportError:
        pass
    for module, attr in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _progress_tqdm(progress: ProgressCallback):
    """A tqdm class for ``hf_hub_download`` that also reports to ``progress``."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Reporting(hf_tqdm):
        # counts itself: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS, no terminal) does not track ``n``
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._ddcolor_done = int(kwargs.get("initial") or 0)

        def update(self, n=1):
            self._ddcolor_done += int(n or 0)
            total = getattr(self, "total", None)
            progress(self._ddcolor_done, int(total) if total else None)
            return super().update(n)

    return _Reporting


def download_official(
    name: str, dest_dir: str | os.PathLike, progress: ProgressCallback | None = None
) -> Path:
    """Download the official checkpoint ``name`` into ``dest_dir`` (if not already there) and return its path.

    Raises:
        CheckpointError: unknown name, network off/blocked, ``HF_HUB_OFFLINE`` set, disk not writable, or a
            truncated/corrupt download (which is deleted). The message says what to download by hand.
    """
    model = _official(name)
    dest_dir = Path(dest_dir)
    target = dest_dir / model.filename
    if target.is_file():
        verify_checkpoint_file(target, model.min_size_bytes)
        return target
    try:
        import huggingface_hub
    except ImportError as exc:
        raise CheckpointError(
            f"{model.filename} is not in {dest_dir} and the huggingface_hub package is missing "
            f"(pip install huggingface_hub). {manual_download_hint(name, dest_dir)}"
        ) from exc
    staging = dest_dir / STAGING_DIRNAME
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create {staging} to download {model.filename} ({exc}). "
            f"{manual_download_hint(name, dest_dir)}"
        ) from exc

    kwargs: dict = {"local_dir": str(staging)}
    if os.environ.get("HF_ENDPOINT"):
        # huggingface_hub reads HF_ENDPOINT once at import; pass it so a mirror set later still applies
        kwargs["endpoint"] = hub_endpoint()
    if progress is not None and "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
        kwargs["tqdm_class"] = _progress_tqdm(progress)
    logger.info("Downloading %s (~%d MB) from %s into %s", model.filename, model.approx_size_mb,
                official_url(name), dest_dir)
    try:
        staged = Path(huggingface_hub.hf_hub_download(model.repo_id, model.filename, **kwargs))
    except _network_errors() as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set, so nothing may be downloaded" if offline else f"{type(exc).__name__}: {reason}"
        if not any(p.is_file() and p.suffix == ".incomplete" for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)  # nothing to resume: leave no trace
        raise CheckpointError(
            f"{model.filename} is not in {dest_dir} and could not be downloaded ({why}). "
            f"{manual_download_hint(name, dest_dir)}"
        ) from exc

    try:
        verify_checkpoint_file(staged, model.min_size_bytes)
    except CheckpointError as exc:
        staged.unlink(missing_ok=True)
        raise CheckpointError(
            f"the download of {model.filename} is incomplete or corrupt and was deleted ({exc}). "
            f"Run the workflow again to retry. {manual_download_hint(name, dest_dir)}"
        ) from exc
    os.replace(staged, target)
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved %s", target)
    return target
