"""Colorize a whole archive (hundreds of thousands of scans) on a Ray cluster, with Ray Data and ``ddcolor``.

Usage (needs the optional extra: ``pip install .[archive]``)::

    python -m tools.archive_colorize SCANS SCANS_colorized --model ddcolor_paper_tiny.pth
    python -m tools.archive_colorize s3://library/scans s3://library/colorized --model /models/ddcolor_modelscope.pth \\
        --address ray://head-node:10001

Every image under SRC (jpg, jpeg, png, webp, tif, tiff, bmp, in sub-folders too; hidden files skipped) is
colorized with the DDColor network directly (no ComfyUI) and written to ``DST/<same relative path>/<name>.png``
with the batch tool's file-name rules (``tools/batch_jobs.output_names``). SRC and DST are local folders or any
URL fsspec can open (``s3://``, ``gs://``, ``hdfs://``, ``file://``...). On a cluster of several machines they
must be reachable from every machine (object store, NFS...): the tool checks this before it starts.

Without ``--address`` a local Ray is started on this machine, so the same command works on a laptop. On a
cluster with GPUs the network runs in one model-holding actor per GPU and decoding, merging and encoding run
as CPU tasks on all machines; without GPUs, CPU actors do all the work of a photo in one step.

A re-run resumes: ``DST/.ddcolor-archive/*.jsonl`` (the manifest) records, for every output, the input's size
and modification time, the settings and the output's size; what is done is skipped. Failed photos are recorded
there with the reason and listed at the end. Output files are written under a temporary name and renamed, so
no half-written file ever carries a final name.

Exit codes: 0 all done, 1 some photos failed (listed), 2 usage or setup error (nothing done), 3 the cluster
failed during the run (finished photos are kept; rerun to resume), 130/143 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import pickle
import posixpath
import shutil
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

if __package__ in (None, ""):  # run as "python tools/archive_colorize.py": make "tools" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tools.batch_jobs import (  # noqa: E402
    IMAGE_EXTENSIONS,
    PARTIAL_SUFFIX,
    InputError,
    OutputLock,
    fmt_duration,
    input_size_arg,
    output_names,
    parse_command_line,
    positive_int_arg,
)

log = logging.getLogger("ComfyUI-DDColor.archive")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CLUSTER = 0, 1, 2, 3
STATE_DIR = ".ddcolor-archive"  # DST/.ddcolor-archive/: the manifest (jsonl files) and the last run's failures
TOOL_FORMAT = 1  # bump when the tool's own processing changes results (invalidates every manifest entry)
PNG_COMPRESS_LEVEL = 1  # zlib level: 1 is ~3x faster to write than ComfyUI's 4, files ~10 % larger
GPU_BATCH, CPU_BATCH = 16, 4  # photos per network call: what suits an 8 GB GPU at 512 in fp16 / a CPU actor
_CRASH_ENV = "DDCOLOR_ARCHIVE_TEST_CRASH_ONCE"  # tests only: a worker exits once, to check Ray's retry


class SetupError(RuntimeError):
    """The cluster or a worker cannot do the job (unreachable, weights missing on a node...): exit code 2."""


# --------------------------------------------------------------------------------------------- file systems


def open_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) for a local folder or any URL fsspec knows (s3://, gs://, file://...)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package (s3fs, gcsfs...) missing
        raise InputError(f"cannot open {url!r}: {exc}. Install the fsspec package for that storage "
                         f"(e.g. pip install s3fs) or give a local folder") from exc
    if _is_local(fs):
        path = os.path.realpath(os.path.expanduser(path)).replace(os.sep, "/")
    return fs, path.rstrip("/") or "/"


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _same_fs(a: Any, b: Any) -> bool:
    return type(a) is type(b) and getattr(a, "storage_options", None) == getattr(b, "storage_options", None)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def write_file(fs: Any, path: str, data: bytes) -> None:
    """``path`` is either absent/old or complete: a local file goes through a temporary name and a rename; an
    object store's PUT is atomic by itself."""
    parent = posixpath.dirname(path)
    if _is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)


# --------------------------------------------------------------------------------------------- discovery


@dataclass
class Item:
    """One photo to colorize (what travels to the workers, besides the config)."""

    src: str  # path on the source filesystem
    rel: str  # relative to SRC, POSIX separators (shown to the user)
    out: str  # output relative to DST (the batch tool's rule)
    size: int
    mtime: str  # the filesystem's modification time (or ETag), as text


def _mtime_key(info: dict) -> str:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "ETag", "etag", "md5Hash"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _hidden(rel: str) -> bool:
    # ".DS_Store", macOS "._IMG_0001.jpg", our own partial files and state folder, anywhere in the path
    return any(part.startswith(".") for part in rel.split("/"))


def list_images(fs: Any, root: str) -> tuple[list[Item], int]:
    """Every image under ``root`` (recursive, by extension), with the batch tool's output names; and how many
    other files were ignored."""
    try:
        if not fs.isdir(root):
            kind = "a file" if fs.exists(root) else "not found"
            raise InputError(f"input {root!r} is {kind}; give the folder that holds the scans")
        found = fs.find(root, detail=True, withdirs=False)
    except OSError as exc:
        raise InputError(f"cannot list {root!r}: {exc}") from exc
    prefix = root.rstrip("/") + "/"
    paths: list[str] = []
    infos: dict[str, dict] = {}
    ignored = 0
    for path, info in found.items():
        path = path if path.startswith("/") or not root.startswith("/") else "/" + path.lstrip("/")
        if not path.startswith(prefix) or _hidden(path[len(prefix):]):
            continue
        if posixpath.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
            ignored += 1
            continue
        paths.append(path)
        infos[path] = info
    paths.sort()
    rels = [p[len(prefix):] for p in paths]
    names = output_names(rels)  # the batch tool's naming rules, clashes included
    items = [Item(src=p, rel=rel, out=out, size=int(infos[p].get("size") or 0), mtime=_mtime_key(infos[p]))
             for p, rel, (out, _compare) in zip(paths, rels, names, strict=True)]
    return items, ignored


# --------------------------------------------------------------------------------------------- manifest


class Manifest:
    """``DST/.ddcolor-archive/run-*.jsonl``: one JSON line per finished or failed photo, the newest line wins.

    A local destination gets one file per run, appended and flushed as results arrive; other filesystems
    (object stores cannot append) get a new part file at most every ``flush_every`` seconds. Either way a killed
    run at worst redoes the photos whose lines were not written yet; their outputs are replaced atomically.
    """

    def __init__(self, fs: Any, root: str, flush_every: float = 10.0):
        self.fs = fs
        self.dir = posixpath.join(root, STATE_DIR)
        self.local = _is_local(fs)
        self.flush_every = flush_every
        self.entries: dict[str, dict] = {}
        self._pending: list[str] = []
        self._run = f"run-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self._seq = 0
        self._fh = None
        self._last_flush = time.monotonic()

    def load(self) -> None:
        try:
            names = sorted(self.fs.glob(posixpath.join(self.dir, "run-*.jsonl")))
        except (OSError, FileNotFoundError):
            names = []
        for name in names:
            try:
                text = self.fs.cat_file(name).decode("utf-8", "replace")
            except OSError as exc:
                log.warning("cannot read %s (%s); the photos it lists will be redone", name, exc)
                continue
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut short
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("out"), str):
                    self.entries[entry["out"]] = entry

    def is_done(self, item: Item, settings: str, outputs: dict[str, int]) -> bool:
        entry = self.entries.get(item.out)
        return bool(
            entry and entry.get("ok") and entry.get("settings") == settings and entry.get("input") == item.rel
            and entry.get("input_size") == item.size and entry.get("input_mtime") == item.mtime
            and outputs.get(item.out) == entry.get("output_size") is not None
        )

    def add(self, record: dict) -> None:
        self.entries[record["out"]] = record
        self._pending.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
        if self.local or time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8")
        if self.local:
            if self._fh is None:
                os.makedirs(self.dir, exist_ok=True)
                self._fh = open(posixpath.join(self.dir, f"{self._run}.jsonl"), "ab")  # noqa: SIM115 - kept open
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        else:
            self._seq += 1
            write_file(self.fs, posixpath.join(self.dir, f"{self._run}-{self._seq:06d}.jsonl"), data)
        self._pending.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def existing_outputs(fs: Any, root: str) -> tuple[dict[str, int], list[str]]:
    """Relative path -> size of every visible file under DST, and the temporary files a killed run left."""
    if not fs.exists(root):
        return {}, []
    prefix = root.rstrip("/") + "/"
    sizes, partials = {}, []
    for path, info in fs.find(root, detail=True, withdirs=False).items():
        path = path if path.startswith("/") or not root.startswith("/") else "/" + path.lstrip("/")
        rel = path[len(prefix):] if path.startswith(prefix) else path
        if rel.endswith(PARTIAL_SUFFIX):
            partials.append(path)
        elif not _hidden(rel):
            sizes[rel] = int(info.get("size") or 0)
    return sizes, partials


# --------------------------------------------------------------------------------------------- worker side
# Everything below up to the driver runs in Ray workers; none of it imports ray.


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    device: str  # "cuda" or "cpu"
    dtype: str  # "float32", "float16", "bfloat16"
    input_size: int
    resize_mode: str
    threads: int  # torch threads in a CPU actor
    src_fs: Any
    dst_fs: Any
    dst_root: str
    crash_marker: str = ""  # tests only (see _CRASH_ENV)


@dataclass
class Decoded:
    raw: np.ndarray  # (H, W, 1 or 3) as decoded (uint8, uint16, int32 or float32): small to send between stages
    divisor: float  # raw / divisor = 0..1
    alpha: np.ndarray | None  # (H, W) uint8, put back unchanged
    exif: bytes | None  # the input's EXIF with its orientation reset, copied onto the result

    @property
    def pixels(self) -> np.ndarray:
        """(H, W, 1 or 3) float32 in 0..1: what the network and the merge see."""
        return np.clip(self.raw.astype(np.float32) / np.float32(self.divisor), 0.0, 1.0)


def decode_image(data: bytes) -> Decoded:
    """Decode an image file like the batch tool sees it: EXIF orientation applied, first page of a TIFF, grey
    kept as one channel, 16-bit scans at their full precision (not cut to 8 bits), alpha kept aside."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        opened.load()  # decodes everything: a truncated or corrupt file fails here
        exif = opened.getexif()
        orientation = exif.get(0x0112, 1)
        img = ImageOps.exif_transpose(opened) if orientation not in (None, 1) else opened
        alpha = None
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            raw = np.asarray(img)
            divisor = 65535.0 if mode.startswith("I;16") or int(raw.max(initial=0)) > 255 else 255.0
        elif mode == "F":
            raw, divisor = np.asarray(img, dtype=np.float32), 1.0
        else:
            if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            elif mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")  # CMYK, YCbCr, P, 1, LAB, HSV
            raw, divisor = np.asarray(img), 255.0
            if img.mode == "RGBA":
                alpha = np.ascontiguousarray(raw[..., 3])
                raw = np.ascontiguousarray(raw[..., :3])
        if raw.ndim == 2:
            raw = raw[..., None]
        exif_bytes = None
        if len(exif):
            if 0x0112 in exif:
                exif[0x0112] = 1
            exif_bytes = exif.tobytes()
    if raw.shape[0] < 1 or raw.shape[1] < 1:
        raise ValueError(f"the image is empty ({raw.shape[1]}x{raw.shape[0]} pixels)")
    return Decoded(raw, divisor, alpha, exif_bytes)


def encode_png(rgb: np.ndarray, alpha: np.ndarray | None, exif: bytes | None) -> bytes:
    """(H, W, 3) float 0..1 -> 8-bit PNG (rounded), with the input's alpha and EXIF put back."""
    from PIL import Image

    arr = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    if alpha is not None:
        arr = np.concatenate([arr, alpha[..., None]], axis=-1)
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    Image.fromarray(arr, "RGBA" if alpha is not None else "RGB").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **kwargs)
    return buf.getvalue()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def load_stage(cfg: WorkerConfig, rows: list[dict]) -> list[dict]:
    """Read, decode and make the network input of each photo; a photo that fails gets ``error``."""
    import torch

    from ddcolor import prepare_input

    out = []
    for row in rows:
        try:
            data = cfg.src_fs.cat_file(row["src"])
        except OSError as exc:
            out.append({**row, "error": f"cannot read {row['src']}: {_reason(exc)}; check that it exists and is "
                                        f"readable from every machine of the cluster"})
            continue
        try:
            decoded = decode_image(data)
            model_input = prepare_input(torch.from_numpy(decoded.pixels[None]), cfg.input_size,
                                        resize_mode=cfg.resize_mode)
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... for bad files
            out.append({**row, "error": f"cannot read image {row['rel']}: {_reason(exc)}. The file may be damaged, "
                                        f"truncated, or not really an image; open it in an image viewer, save it "
                                        f"again as JPEG or PNG, and rerun"})
            continue
        out.append({**row, "error": "", "decoded": decoded, "x": model_input.x[0].numpy(),
                    "content_hw": model_input.content_hw})
    return out


def load_model(cfg: WorkerConfig):
    """The model of one actor (raises SetupError when this machine lacks the weights)."""
    import torch

    from ddcolor import DDColorError
    from ddcolor import load_model as ddcolor_load_model

    if not os.path.exists(cfg.model):
        raise SetupError(f"the weights file {cfg.model} is not on the machine {socket.gethostname()}; copy it to "
                         f"the same path on every machine of the cluster (or put it on a shared folder)")
    if cfg.device == "cpu":
        torch.set_num_threads(max(1, cfg.threads))
    try:
        return ddcolor_load_model(cfg.model, device=cfg.device, dtype=getattr(torch, cfg.dtype))
    except DDColorError as exc:
        raise SetupError(f"cannot load the weights on {socket.gethostname()}: {exc}") from exc


def predict_stage(model: Any, rows: list[dict], batch_size: int) -> list[dict]:
    """Run the network on the rows that decoded, photos of the same network-input shape together."""
    import torch

    from ddcolor import ModelInput, predict_ab

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row["error"]:
            groups.setdefault((row["x"].shape, tuple(row["content_hw"])), []).append(row)
    for (_shape, content_hw), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            try:
                x = torch.from_numpy(np.stack([r["x"] for r in chunk]))
                ab = predict_ab(model, ModelInput(x, content_hw)).numpy()
            except (RuntimeError, ValueError) as exc:  # out of memory on a huge batch, a broken GPU...
                for r in chunk:
                    r["error"] = f"the network failed on this photo's batch: {_reason(exc)}; lower --batch-size"
                continue
            for r, one in zip(chunk, ab, strict=True):
                r["ab"] = one
                del r["x"]
    return rows


def finish_stage(cfg: WorkerConfig, rows: list[dict]) -> list[dict]:
    """Merge at full resolution, encode and write each photo; returns one small result row per photo."""
    import torch

    from ddcolor import merge_lab

    results = []
    for row in rows:
        t0 = time.monotonic()
        result = {"out": row["out"], "rel": row["rel"], "ok": False, "reason": row["error"], "output_size": -1,
                  "host": socket.gethostname()}
        if not row["error"]:
            decoded: Decoded = row["decoded"]
            try:
                rgb = merge_lab(torch.from_numpy(decoded.pixels[None]), torch.from_numpy(row["ab"][None]))[0]
                data = encode_png(rgb.numpy(), decoded.alpha, decoded.exif)
            except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop the archive
                result["reason"] = f"cannot finish {row['rel']}: {_reason(exc)}"
            else:
                target = posixpath.join(cfg.dst_root, row["out"])
                try:
                    write_file(cfg.dst_fs, target, data)
                    result.update(ok=True, reason="", output_size=len(data))
                except OSError as exc:
                    result["reason"] = (f"cannot write {target}: {_reason(exc)}; check that the destination is "
                                        f"writable and has free space")
        result["seconds"] = round(time.monotonic() - t0, 4)
        results.append(result)
    return results


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    return [{k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in keys}
            for i in range(len(batch[keys[0]]))]


def _columns(rows: list[dict], keys: Iterable[str]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in keys}


_RESULT_KEYS = ("out", "rel", "ok", "reason", "output_size", "host", "seconds")


def _maybe_crash(cfg: WorkerConfig, rels: Sequence[str]) -> None:
    """Tests only. ``MARKER``: the first call anywhere in the cluster kills its worker process (Ray must retry).
    ``MARKER::REL``: every call whose batch holds the photo REL kills its worker (the batch must fail alone)."""
    if not cfg.crash_marker:
        return
    marker, _, rel = cfg.crash_marker.partition("::")
    if (rel and rel in rels) or (not rel and not os.path.exists(marker)):
        with open(marker, "a", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
        os._exit(1)


class FusedColorizer:
    """A CPU actor: read, decode, network, merge, encode and write in one step (no data moves between stages)."""

    def __init__(self, cfg: WorkerConfig, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.model = load_model(cfg)

    def __call__(self, batch: dict) -> dict:
        _maybe_crash(self.cfg, list(batch["rel"]))
        rows = predict_stage(self.model, load_stage(self.cfg, _rows(batch)), self.batch_size)
        return _columns(finish_stage(self.cfg, rows), _RESULT_KEYS)


def load_task(batch: dict, cfg: WorkerConfig) -> dict:
    """Split pipeline, CPU task: decode and prepare. ``head`` (names, network input: small) goes to the model
    actor; ``body`` (the decoded photo, in its own 8 or 16 bits) passes it unopened to the finishing task."""
    rows = load_stage(cfg, _rows(batch))
    heads = [pickle.dumps({k: v for k, v in r.items() if k != "decoded"}, protocol=5) for r in rows]
    bodies = [pickle.dumps(r.get("decoded"), protocol=5) for r in rows]
    return {"head": np.array(heads, dtype=object), "body": np.array(bodies, dtype=object)}


class Predictor:
    """Split pipeline, GPU (or CPU) actor: only the network."""

    def __init__(self, cfg: WorkerConfig, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.model = load_model(cfg)

    def __call__(self, batch: dict) -> dict:
        rows = [pickle.loads(h) for h in batch["head"]]
        _maybe_crash(self.cfg, [r["rel"] for r in rows])
        rows = predict_stage(self.model, rows, self.batch_size)
        return {"head": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object), "body": batch["body"]}


def finish_task(batch: dict, cfg: WorkerConfig) -> dict:
    """Split pipeline, CPU task: merge, encode and write."""
    rows = []
    for head, body in zip(batch["head"], batch["body"], strict=True):
        row = pickle.loads(head)
        row["decoded"] = pickle.loads(body)
        rows.append(row)
    return _columns(finish_stage(cfg, rows), _RESULT_KEYS)


def node_check(model: str, dst_fs: Any, dst_root: str, src_fs: Any, src_probe: str, probe_name: str) -> list[str]:
    """Run on every machine before the job: the weights, the first input and the destination must be there."""
    host = socket.gethostname()
    problems = []
    if not os.path.isfile(model):
        problems.append(f"{host}: the weights file {model} is not there; copy it to the same path on every machine "
                        f"(or put it on a shared folder)")
    try:
        if not src_fs.exists(src_probe):
            problems.append(f"{host}: cannot see the input {src_probe}; SRC must be reachable from every machine "
                            f"(an object store URL or a shared folder)")
    except OSError as exc:
        problems.append(f"{host}: cannot read the input {src_probe}: {_reason(exc)}")
    probe = posixpath.join(dst_root, STATE_DIR, probe_name)
    try:
        write_file(dst_fs, probe, b"ddcolor archive write check\n")
    except OSError as exc:
        problems.append(f"{host}: cannot write to {dst_root}: {_reason(exc)}")
    return problems


# --------------------------------------------------------------------------------------------- driver side


class Progress:
    """One line redrawn in place on a terminal; a line every ``every`` seconds otherwise (logs, CI)."""

    def __init__(self, total: int, stream: TextIO, enabled: bool = True, every: float = 10.0):
        self.total, self.stream, self.enabled, self.every = total, stream, enabled, every
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.ok = self.failed = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def line(self) -> str:
        done = self.ok + self.failed
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = fmt_duration((self.total - done) / rate) if rate else "?"
        filled = int(20 * done / self.total) if self.total else 20
        text = (f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} "
                f"{100.0 * done / max(1, self.total):3.0f}% | {rate:.2f} img/s | ETA {eta}")
        return text + (f" | {self.failed} failed" if self.failed else "")

    def update(self, ok: int, failed: int, force: bool = False) -> None:
        self.ok += ok
        self.failed += failed
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and (force or now - self._last >= 0.1):
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + self.line()[: cols - 1].ljust(cols - 1))
        elif not self.tty and (force or now - self._last >= self.every):
            self.stream.write(self.line() + "\n")
        else:
            return
        self.stream.flush()
        self._last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Plan:
    src_fs: Any
    src_root: str
    dst_fs: Any
    dst_root: str
    todo: list[Item]
    skipped: int
    ignored: int
    manifest: Manifest
    settings: str = ""
    partials: list[str] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)  # what DST holds: relative path -> size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.archive_colorize",
        description="Colorize a whole archive of black-and-white scans with DDColor on Ray Data (a local Ray "
        "without --address). Rerun the same command to resume.",
        epilog="Exit codes: 0 all done, 1 some photos failed, 2 usage/setup error, 3 the cluster failed during "
        "the run, 130/143 interrupted. Needs: pip install .[archive]",
    )
    parser.add_argument("src", metavar="SRC", help="folder or URL (s3://, gs://, file://...) searched recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    parser.add_argument("dst", metavar="DST", help="output folder or URL, mirroring SRC's tree; not inside SRC")
    parser.add_argument("--model", required=True, help="DDColor weights file (.pth/.safetensors); on a cluster it "
                        "must be at this path on every machine")
    parser.add_argument("--address", help="Ray cluster: ray://HEAD:10001 (Ray Client), HEAD:6379, or auto; "
                        "default: start a local Ray on this machine")
    parser.add_argument("--input-size", type=input_size_arg, default=512, metavar="PX",
                        help="network resolution, a multiple of 32 (default 512, the official setting)")
    parser.add_argument("--keep-aspect", action="store_true",
                        help="keep the photo's aspect ratio at the network (default: the official square stretch)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="auto: fp16 on GPUs, fp32 on CPUs")
    parser.add_argument("--pipeline", choices=("auto", "fused", "split"), default="auto",
                        help="split: decode/merge as CPU tasks, the network in actors (default with GPUs); "
                        "fused: everything in the actors (default without GPUs)")
    parser.add_argument("--actors", type=positive_int_arg, metavar="N",
                        help="model actors (default: one per GPU; without GPUs one per 2 CPUs)")
    parser.add_argument("--batch-size", type=positive_int_arg, metavar="N",
                        help=f"photos per network call (default {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU)")
    parser.add_argument("--num-cpus", type=positive_int_arg, metavar="N", help="CPUs of the local Ray (default: all)")
    parser.add_argument("--retries", type=int, default=3, metavar="N",
                        help="times Ray retries a batch whose worker died (default 3); then its photos fail")
    parser.add_argument("--dry-run", action="store_true", help="list what would be done, start nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (Ray's too)")
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    """Everything decided before Ray starts: the files, their output names, what is already done."""
    src_fs, src_root = open_fs(args.src)
    dst_fs, dst_root = open_fs(args.dst)
    if _same_fs(src_fs, dst_fs) and (_inside(dst_root, src_root) or _inside(src_root, dst_root)):
        where = "the same folder as" if dst_root == src_root else (
            "inside" if _inside(dst_root, src_root) else "a parent of")
        raise InputError(f"the output {args.dst!r} is {where} the input {args.src!r}; a later run would take the "
                         f"results for scans. Choose an output folder outside the input folder")
    items, ignored = list_images(src_fs, src_root)
    if not items:
        raise InputError(f"no images found in {args.src!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    manifest = Manifest(dst_fs, dst_root)
    manifest.load()
    outputs, partials = existing_outputs(dst_fs, dst_root)
    return Plan(src_fs, src_root, dst_fs, dst_root, items, 0, ignored, manifest, partials=partials, outputs=outputs)


def settings_id(args: argparse.Namespace, dtype: str, model_size: int) -> str:
    blob = json.dumps({"tool": "archive_colorize", "format": TOOL_FORMAT, "model": os.path.basename(args.model),
                       "model_size": model_size, "input_size": args.input_size,
                       "resize_mode": "keep_aspect" if args.keep_aspect else "square", "dtype": dtype},
                      sort_keys=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:32]


def split_done(plan: Plan, settings: str) -> None:
    todo = [item for item in plan.todo if not plan.manifest.is_done(item, settings, plan.outputs)]
    plan.skipped = len(plan.todo) - len(todo)
    plan.todo = todo
    plan.settings = settings


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens on (ray.init would wait for minutes)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SetupError(f"--address {address!r} is not HOST:PORT; use ray://HEAD:10001, HEAD:6379 or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except OSError as exc:
        raise SetupError(f"cannot reach the Ray cluster at {address}: {_reason(exc)}. Check that the head node is "
                         f"running (ray start --head) and that this machine can reach port {port}") from exc


def start_ray(args: argparse.Namespace) -> bool:
    """Connect to (or start) Ray; True if this call started the connection (and so must shut it down)."""
    import ray

    if ray.is_initialized():  # tests and notebooks: use the session that is already there
        return False
    quiet = {"logging_level": logging.DEBUG if args.verbose else logging.ERROR, "log_to_driver": args.verbose}
    if args.address:
        _check_reachable(args.address)
        try:
            ray.init(address=args.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise SetupError(f"cannot connect to the Ray cluster at {args.address}: {exc}") from exc
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, **quiet)
    return True


def preflight(plan: Plan, args: argparse.Namespace) -> int:
    """Check every live machine (weights, input, destination); returns the weights' size. Raises SetupError."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = f"{os.getpid()}-{int(time.time())}"
    check = ray.remote(num_cpus=0)(node_check)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(args.model, plan.dst_fs, plan.dst_root, plan.src_fs, plan.todo[0].src, f"probe-{token}-{i}")
            for i, n in enumerate(nodes)]
    try:
        problems = [p for found in ray.get(refs, timeout=300) for p in found]
    except ray.exceptions.GetTimeoutError as exc:
        raise SetupError("the cluster's machines did not answer a 5-minute check; is the cluster busy or "
                         "short of CPUs?") from exc
    if problems:
        raise SetupError("not every machine of the cluster can do the job:\n  " + "\n  ".join(problems))
    # the probes of every machine must be visible from here: otherwise DST is not one shared place
    state = posixpath.join(plan.dst_root, STATE_DIR)
    probes = list(plan.dst_fs.glob(posixpath.join(state, f"probe-{token}-*")))
    for probe in probes:
        with contextlib.suppress(OSError):
            plan.dst_fs.rm_file(probe)
    if len(probes) < len(nodes):
        raise SetupError(f"{args.dst} is not shared by the cluster's {len(nodes)} machines (this machine sees the "
                         f"check files of only {len(probes)}); use an object-store URL or a shared folder for DST")
    return int(os.path.getsize(args.model)) if os.path.isfile(args.model) else 0


@dataclass
class Layout:
    gpus: float
    pipeline: str
    actors: int
    batch_size: int
    device: str
    dtype: str
    threads: int


def choose_layout(args: argparse.Namespace) -> Layout:
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    device = "cuda" if gpus >= 1 else "cpu"
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(
        args.precision, "float16" if device == "cuda" else "float32")
    pipeline = args.pipeline if args.pipeline != "auto" else ("split" if device == "cuda" else "fused")
    if device == "cuda":
        actors = args.actors or int(gpus)
        threads = 1
    else:
        actors = args.actors or max(1, int(cpus) // 2)
        # the actors share the CPUs; in the split pipeline leave at least one for the decode/merge tasks
        spare = 1 if pipeline == "split" else 0
        threads = max(1, (int(cpus) - spare) // actors)
    return Layout(gpus, pipeline, actors, args.batch_size or (GPU_BATCH if device == "cuda" else CPU_BATCH),
                  device, dtype, threads)


def build_dataset(plan: Plan, layout: Layout, cfg: WorkerConfig, retries: int):
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts photos, not blocks
    ctx.max_errored_blocks = -1  # a batch that keeps killing its worker fails its photos, not the archive
    rows = [{"src": i.src, "rel": i.rel, "out": i.out} for i in plan.todo]
    blocks = max(1, min(len(rows), math.ceil(len(rows) / layout.batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # Ray Data's own default retries a task forever; a photo that kills its worker every time would never end.
    # max_task_retries has no named parameter yet, only the ray_remote_args (deprecated, removed in 2.64;
    # the extra pins ray below that).
    actor_args = {"max_restarts": -1, "max_task_retries": max(0, retries)}
    # A CPU actor takes one batch at a time: when a photo kills it, no queued neighbour batch is charged a retry.
    # The GPU actor keeps Ray's default of 2 queued (its input arrives while it computes; it never decodes).
    pool = ray.data.ActorPoolStrategy(size=layout.actors,
                                      max_tasks_in_flight_per_actor=1 if layout.pipeline == "fused" else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return _stages(ds, layout, cfg, retries, pool, actor_args)


def _stages(ds, layout: Layout, cfg: WorkerConfig, retries: int, pool, actor_args: dict):
    if layout.pipeline == "fused":
        return ds.map_batches(FusedColorizer, batch_size=layout.batch_size, batch_format="numpy", compute=pool,
                              fn_constructor_args=(cfg, layout.batch_size), num_cpus=layout.threads,
                              **actor_args)
    task_args = {"batch_size": layout.batch_size, "batch_format": "numpy", "fn_args": (cfg,), "num_cpus": 1,
                 "max_retries": max(0, retries)}
    ds = ds.map_batches(load_task, **task_args)
    ds = ds.map_batches(Predictor, batch_size=layout.batch_size, batch_format="numpy", compute=pool,
                        fn_constructor_args=(cfg, layout.batch_size),
                        **({"num_gpus": 1, "num_cpus": 1} if layout.device == "cuda" else {"num_cpus": layout.threads}),
                        **actor_args)
    return ds.map_batches(finish_task, **task_args)


def _root_cause(exc: BaseException) -> str:
    """The most useful line of a Ray error (our own SetupError message when a worker raised one)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        if isinstance(cur, SetupError):
            return str(cur)
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    marker = "SetupError: "
    if marker in text:
        return text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def run(plan: Plan, layout: Layout, cfg: WorkerConfig, args: argparse.Namespace, progress: Progress
        ) -> tuple[list[dict], str | None]:
    """Stream the results back; every one is in the manifest as soon as it arrives. Returns (failures, fatal)."""
    ds = build_dataset(plan, layout, cfg, args.retries)
    failures: list[dict] = []
    seen: set[str] = set()
    by_out = {i.out: i for i in plan.todo}
    fatal = None
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = bad = 0
            for row in _rows(batch):
                item = by_out[row["out"]]
                seen.add(item.out)
                record = {"out": item.out, "input": item.rel, "ok": bool(row["ok"]), "settings": plan.settings,
                          "input_size": item.size, "input_mtime": item.mtime, "host": row["host"],
                          "seconds": row["seconds"], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                if row["ok"]:
                    record["output_size"] = int(row["output_size"])
                    ok += 1
                else:
                    record["reason"] = row["reason"]
                    failures.append(record)
                    bad += 1
                plan.manifest.add(record)
            progress.update(ok, bad)
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in many types; all end the run the same way
        fatal = _root_cause(exc)
    finally:
        plan.manifest.flush()
    if fatal is None:
        lost = [i for i in plan.todo if i.out not in seen]
        for item in lost:  # their batches failed on every retry (max_errored_blocks lets the rest finish)
            record = {"out": item.out, "input": item.rel, "ok": False, "settings": plan.settings,
                      "reason": f"its batch failed {args.retries + 1} times (the worker process died: out of "
                                f"memory, or a crash in a library); try it alone, or with a smaller --batch-size",
                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            failures.append(record)
            plan.manifest.add(record)
        progress.update(0, len(lost), force=True)
    plan.manifest.flush()
    return failures, fatal


def write_failures(plan: Plan, failures: Sequence[dict]) -> str | None:
    if not failures:
        return None
    path = posixpath.join(plan.dst_root, STATE_DIR, "failed-last-run.txt")
    text = "".join(f"{f['input']}\t{f['reason']}\n" for f in failures)
    try:
        write_file(plan.dst_fs, path, text.encode("utf-8"))
    except OSError:
        return None
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        parser.exit(EXIT_USAGE, "error: Ray Data is not installed; install the archive extra: "
                                "python -m pip install 'ray[data,client]>=2.60' (or pip install .[archive])\n")
    if not args.verbose:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        plan = make_plan(args)
    except InputError as exc:
        parser.exit(EXIT_USAGE, f"error: {exc}\n")
    with contextlib.ExitStack() as stack:
        if _is_local(plan.dst_fs) and not args.dry_run:
            try:
                os.makedirs(plan.dst_root, exist_ok=True)
                stack.enter_context(OutputLock(Path(plan.dst_root)))
            except InputError:
                parser.exit(EXIT_USAGE, f"error: another run is writing to {plan.dst_root}; wait for it to finish "
                                        f"or choose another output folder\n")
            except OSError as exc:
                parser.exit(EXIT_USAGE, f"error: cannot write to the output folder {plan.dst_root}: "
                                        f"{exc.strerror or exc}. Choose a folder you can write to\n")
        return _run_with_ray(args, plan, parser)


def _run_with_ray(args: argparse.Namespace, plan: Plan, parser: argparse.ArgumentParser) -> int:
    import ray

    try:
        started = start_ray(args)
    except SetupError as exc:
        parser.exit(EXIT_USAGE, f"error: {exc}\n")
    try:
        try:
            layout = choose_layout(args)
            if args.dry_run:
                model_size = os.path.getsize(args.model) if os.path.isfile(args.model) else 0
            else:
                model_size = preflight(plan, args)
        except SetupError as exc:
            parser.exit(EXIT_USAGE, f"error: {exc}\n")
        split_done(plan, settings_id(args, layout.dtype, model_size))
        where = f"{layout.actors} {'GPU' if layout.device == 'cuda' else 'CPU'} actor(s), {layout.pipeline} " \
                f"pipeline, batch {layout.batch_size}, {layout.dtype}"
        if args.dry_run:
            for item in plan.todo:
                sys.stdout.write(f"todo  {item.rel} -> {item.out}\n")
            sys.stdout.write(f"{len(plan.todo)} to colorize, {plan.skipped} already done; would use {where} "
                             f"(dry run, nothing written)\n")
            return EXIT_OK
        for path in plan.partials:
            with contextlib.suppress(OSError):
                plan.dst_fs.rm_file(path)
        if not plan.todo:
            sys.stdout.write(f"Nothing to do: all {plan.skipped} photos in {args.dst} are already colorized.\n")
            return EXIT_OK
        cfg = WorkerConfig(model=args.model, device=layout.device, dtype=layout.dtype, input_size=args.input_size,
                           resize_mode="keep_aspect" if args.keep_aspect else "square", threads=layout.threads,
                           src_fs=plan.src_fs, dst_fs=plan.dst_fs, dst_root=plan.dst_root,
                           crash_marker=os.environ.get(_CRASH_ENV, ""))
        progress = Progress(len(plan.todo), sys.stderr, enabled=not args.no_progress)
        if not args.no_progress:
            sys.stderr.write(f"{len(plan.todo)} photo(s) to colorize ({plan.skipped} already done) with {where}\n")
        t0 = time.monotonic()
        stopped = {"signal": 0}

        def on_term(signum, _frame):
            stopped["signal"] = signum
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            failures, fatal = run(plan, layout, cfg, args, progress)
        except KeyboardInterrupt:
            plan.manifest.close()
            progress.close()
            sys.stderr.write(f"\nstopped after {progress.ok} photo(s); finished photos are kept; run the same "
                             f"command again to resume\n")
            return 128 + (stopped["signal"] or signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, previous)
            plan.manifest.close()
        progress.close()
        seconds = time.monotonic() - t0
        report = write_failures(plan, failures)
        done = progress.ok
        rate = f", {done / seconds:.2f} photos/s" if done and seconds > 0 else ""
        lines = [f"Colorized {done} photo(s) into {args.dst} in {fmt_duration(seconds)}{rate}; skipped "
                 f"{plan.skipped} already done; {len(failures)} failed."]
        if failures:
            lines.append("Failed:")
            lines.extend(f"  {f['input']}: {f['reason']}" for f in failures[:50])
            if len(failures) > 50:
                lines.append(f"  ... and {len(failures) - 50} more")
            if report:
                lines.append(f"The full list is in {report}; rerun the same command to retry them.")
        if plan.ignored:
            lines.append(f"Ignored {plan.ignored} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)}.")
        if fatal:
            lines.append(f"Stopped: the cluster failed: {fatal}")
            lines.append(f"{len(plan.todo) - done - len(failures)} photo(s) not done yet; finished ones are kept; "
                         f"run the same command again to resume.")
        sys.stdout.write("\n".join(lines) + "\n")
        if fatal:
            return EXIT_CLUSTER
        return EXIT_FAILED if failures else EXIT_OK
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
