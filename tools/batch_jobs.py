"""The client-side half of batch colorizing: which files, where their results go, what is already done.

Nothing here talks to the server, so all of it is unit-tested without one:

* :func:`discover` finds the input images (recursive, by extension, hidden files skipped);
* :func:`output_names` (the file name rules, also used by other tools) and :func:`plan_jobs` map every input
  to ``OUT/<same relative path>/<stem>.png`` (and ``<stem>.compare.png``);
* :class:`Manifest` remembers, in ``OUT/.ddcolor-batch.json``, the fingerprint (size, mtime, sha256) of the
  input and the settings each output was made with, so a rerun skips finished work;
* :func:`prepare_upload` decodes an image, applies its EXIF orientation and returns the bytes to upload;
* :func:`finalize_output` puts the input's alpha channel and EXIF (date taken, camera) back on the result;
* :func:`write_atomic` writes through a temporary file and ``os.replace`` so no half-written file is ever left
  under the final name;
* :class:`OutputLock` keeps a second run from writing into the same output folder at the same time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, PngImagePlugin

log = logging.getLogger("ComfyUI-DDColor.batch")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
MANIFEST_NAME = ".ddcolor-batch.json"
LOCK_NAME = ".ddcolor-batch.lock"
MANIFEST_VERSION = 1
PARTIAL_SUFFIX = ".ddcolor-partial"
COMPARE_SUFFIX = ".compare.png"
# formats whose bytes are uploaded unchanged when no rotation/conversion is needed (LoadImage reads them as is)
_PASSTHROUGH_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
_PASSTHROUGH_MODES = {"RGB", "L", "RGBA"}


class InputError(ValueError):
    """A problem with the command line's inputs (missing path, output inside input...): exit code 2."""


class ImageReadError(ValueError):
    """One input image cannot be used (corrupt, truncated, unsupported); the batch goes on without it."""


# --------------------------------------------------------------------------------------------- discovery


@dataclass
class Discovery:
    files: list[Path]  # absolute, sorted, de-duplicated
    base: Path  # the folder the output tree mirrors
    ignored: list[Path] = field(default_factory=list)  # files in scanned folders with other extensions


def _is_hidden(name: str) -> bool:
    # ".DS_Store", macOS "._IMG_0001.jpg" resource forks, editor temp files, our own partial files
    return name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def discover(inputs: Sequence[str | os.PathLike], exclude: Path | None = None) -> Discovery:
    """Every image under ``inputs`` (folders are scanned recursively; files are taken as given).

    Files named on the command line are kept whatever their extension (an unsupported one is reported as a
    failure of that file); inside folders only ``IMAGE_EXTENSIONS`` are taken and the rest is listed in
    ``ignored``. ``exclude`` (the output folder) is never scanned, so an output folder inside the input folder
    does not feed its own results back in.
    """
    if not inputs:
        raise InputError("no input given: name a folder of photos (or some image files)")
    exclude = exclude.resolve() if exclude is not None else None
    files: dict[Path, None] = {}
    ignored: list[Path] = []
    anchors: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise InputError(f"input {str(raw)!r} does not exist; check the path (quote it if it contains spaces)")
        path = path.resolve()
        if path.is_dir():
            anchors.append(path)
            for root, dirs, names in os.walk(path):
                root_path = Path(root)
                dirs[:] = sorted(
                    d for d in dirs if not _is_hidden(d) and not (exclude and (root_path / d).resolve() == exclude)
                )
                for name in sorted(names):
                    if _is_hidden(name):
                        continue
                    candidate = root_path / name
                    if candidate.suffix.lower() in IMAGE_EXTENSIONS:
                        files[candidate] = None
                    else:
                        ignored.append(candidate)
        elif path.is_file():
            anchors.append(path.parent)
            files[path] = None
        else:
            raise InputError(f"input {str(raw)!r} is neither a file nor a folder")
    base = anchors[0] if len(anchors) == 1 else _common_base(anchors)
    return Discovery(files=sorted(files), base=base, ignored=ignored)


def _common_base(anchors: Iterable[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(a) for a in anchors]))
    except ValueError as exc:  # different drives on Windows
        raise InputError(f"the inputs have no common folder ({exc}); run the tool once per drive") from exc


# --------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    src: Path  # absolute input path
    rel: str  # input path relative to the base, POSIX separators (shown to the user)
    out_rel: str  # result path relative to the output folder, POSIX separators
    compare_rel: str  # comparison image path relative to the output folder

    def out_path(self, out_dir: Path) -> Path:
        return out_dir.joinpath(*self.out_rel.split("/"))

    def compare_path(self, out_dir: Path) -> Path:
        return out_dir.joinpath(*self.compare_rel.split("/"))


def output_names(rels: Sequence[str]) -> list[tuple[str, str]]:
    """The output file name rules, shared by every tool that writes colorized copies of a folder tree.

    ``rels`` are input paths relative to the mirrored folder, with ``/`` separators; the result is, for each,
    ``(result_rel, compare_rel)``: ``sub/name.jpg`` -> ``("sub/name.png", "sub/name.compare.png")``.

    When two inputs would land on the same output (``a.jpg`` and ``a.png``, or ``a.compare.jpg`` against the
    comparison image of ``a.jpg``), the clashing ones keep their extension instead: ``a.jpg.png``,
    ``a.png.png``. Clashes are judged case-insensitively (Windows and macOS file systems). The answer for one
    path depends on the other paths in ``rels`` (only through such clashes), so pass the whole tree at once.
    """

    def names(rel: str, keep_ext: bool) -> tuple[str, str]:
        parent, _, name = rel.rpartition("/")
        stem = name if keep_ext else name.rsplit(".", 1)[0] if "." in name else name
        prefix = f"{parent}/" if parent else ""
        return f"{prefix}{stem}.png", f"{prefix}{stem}{COMPARE_SUFFIX}"

    keep_ext = [False] * len(rels)
    for _ in range(3):  # keeping the extension makes names unique unless inputs differ only in case
        owners: dict[str, list[int]] = {}
        for i, rel in enumerate(rels):
            for target in names(rel, keep_ext[i]):
                owners.setdefault(target.lower(), []).append(i)
        clashing = {i for idx in owners.values() if len(idx) > 1 for i in idx}
        if not clashing or all(keep_ext[i] for i in clashing):
            break
        for i in clashing:
            keep_ext[i] = True
    return [names(rel, keep_ext[i]) for i, rel in enumerate(rels)]


def plan_jobs(files: Sequence[Path], base: Path) -> list[Job]:
    """Map inputs to outputs with :func:`output_names`: ``base/sub/name.jpg`` -> ``sub/name.png``."""
    rels = [f.relative_to(base).as_posix() for f in files]
    return [
        Job(src=src, rel=rel, out_rel=out_rel, compare_rel=compare_rel)
        for src, rel, (out_rel, compare_rel) in zip(files, rels, output_names(rels), strict=True)
    ]


def check_output_dir(out_dir: Path, jobs: Sequence[Job], input_dirs: Sequence[Path] = ()) -> None:
    """Refuse an output folder whose results would overwrite an input or be picked up as inputs next time.

    The rule (chosen over silently skipping our own files): results must not land in a scanned input folder.
    ``-o`` equal to an input folder, or a folder above it, is refused; an output folder *inside* an input
    folder is fine, because :func:`discover` never scans it.
    """
    out_dir = out_dir.resolve()
    scanned = [d.resolve() for d in input_dirs]
    for folder in scanned:
        if out_dir == folder:
            raise InputError(
                f"output folder {out_dir} is the input folder: the results would sit between the photos and be "
                f"picked up as inputs by the next run; choose another output folder with -o "
                f"(e.g. -o {out_dir.parent / (out_dir.name + '_colorized')})"
            )
    inputs = {j.src for j in jobs}
    for job in jobs:
        for target in (job.out_path(out_dir), job.compare_path(out_dir)):
            if target in inputs:
                raise InputError(
                    f"output {target} would overwrite the input image of the same name; "
                    f"choose an output folder (-o) different from the input folder"
                )
            if any(_inside(target, folder) and not _inside(out_dir, folder) for folder in scanned):
                raise InputError(
                    f"output folder {out_dir} contains an input folder: results such as {target} would be "
                    f"picked up as inputs by the next run; choose an output folder outside the inputs with -o"
                )


# --------------------------------------------------------------------------------------------- fingerprints


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: dict) -> str:
    """A stable hash of everything that changes the result (the patched workflow, the tool's format version)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:32]


class Manifest:
    """``OUT/.ddcolor-batch.json``: what was made from what, with which settings.

    ``{"version": 1, "entries": {"sub/a.png": {"input": "sub/a.jpg", "input_size": ..., "input_mtime_ns": ...,
    "input_sha256": ..., "settings": ..., "output_size": ..., "compare_size": ... | null, "done_at": ...}}}``

    An entry is written only after its output file is complete, and the file itself is replaced atomically,
    so an interrupted run at worst redoes the images that were in flight.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == MANIFEST_VERSION and isinstance(data.get("entries"), dict):
                    self.entries = data["entries"]
                else:
                    log.warning("%s has an unknown format; every image will be redone", self.path)
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s (%s); every image will be redone", self.path, exc)

    def check_done(self, job: Job, settings: str, want_compare: bool) -> tuple[bool, str | None]:
        """Whether ``job`` is already done with ``settings``; also returns the input sha256 if it was computed.

        Done means: the output (and the comparison image if wanted) exist with the recorded sizes, the settings
        match, and the input is unchanged: same size and mtime (fast path, no read), or else the same sha256
        (e.g. the photos were copied to a new disk and lost their mtimes).
        """
        entry = self.entries.get(job.out_rel)
        if not entry or entry.get("settings") != settings or entry.get("input") != job.rel:
            return False, None
        if not _has_size(job.out_path(self.out_dir), entry.get("output_size")):
            return False, None
        if want_compare and not _has_size(job.compare_path(self.out_dir), entry.get("compare_size")):
            return False, None
        try:
            stat = job.src.stat()
        except OSError:
            return False, None
        if stat.st_size != entry.get("input_size"):
            return False, None
        if stat.st_mtime_ns == entry.get("input_mtime_ns"):
            return True, None
        digest = sha256_file(job.src)
        if digest != entry.get("input_sha256"):
            return False, digest
        entry["input_mtime_ns"] = stat.st_mtime_ns  # same content, new mtime: remember it for next time
        return True, digest

    def record(self, job: Job, settings: str, input_sha256: str, stat: os.stat_result, compare: bool,
               server: str | None = None) -> None:
        out = job.out_path(self.out_dir)
        cmp_path = job.compare_path(self.out_dir)
        self.entries[job.out_rel] = {
            "input": job.rel,
            "input_size": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "input_sha256": input_sha256,
            "settings": settings,
            "output_size": out.stat().st_size,
            "compare_size": cmp_path.stat().st_size if compare else None,
            "done_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if server:
            self.entries[job.out_rel]["server"] = server  # which ComfyUI made it (several may share a batch)

    def save(self) -> None:
        data = {"version": MANIFEST_VERSION, "tool": "ComfyUI-DDColor batch_colorize", "entries": self.entries}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def _has_size(path: Path, size: object) -> bool:
    try:
        return isinstance(size, int) and path.stat().st_size == size
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- files


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # short, whatever the final name's length: any name that fits as an output fits as its temporary file too
    token = hashlib.sha256(f"{path.name}\0{os.getpid()}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    tmp = path.with_name(f".{token}{PARTIAL_SUFFIX}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partials(out_dir: Path) -> int:
    """Delete temporary files a killed run left behind in ``out_dir``; returns how many."""
    count = 0
    if not out_dir.is_dir():
        return 0
    for root, _dirs, names in os.walk(out_dir):
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                try:
                    (Path(root) / name).unlink()
                    count += 1
                except OSError as exc:
                    log.warning("cannot remove leftover temporary file %s: %s", Path(root) / name, exc)
    return count


class OutputLock:
    """An exclusive lock on ``OUT/.ddcolor-batch.lock`` for the whole run.

    Two runs writing into one folder would delete each other's temporary files (:func:`remove_partials`) and
    overwrite each other's manifest, so the second one is refused with :class:`InputError`. The operating
    system drops the lock when the process ends, however it ends, so a crashed run never blocks the next one.
    The (empty but for a pid) lock file stays; it is hidden and harmless.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self._fh = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")  # noqa: SIM115 - kept open for the whole run: the open file holds the lock
        try:
            _lock_nonblocking(fh)
        except OSError:
            try:
                fh.seek(0)
                holder = fh.read(32).decode("ascii", "replace").strip()
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = ""
            fh.close()
            who = f" (process {holder})" if holder.isdigit() else ""
            raise InputError(
                f"another batch_colorize run{who} is writing to {self.path.parent}; wait for it to finish, "
                f"or give this run another output folder with -o"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()).encode("ascii"))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # closing the file releases the lock
        self._fh = None


def _lock_nonblocking(fh) -> None:
    """Lock ``fh`` exclusively or raise OSError at once if another process holds it."""
    if os.name == "nt":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# --------------------------------------------------------------------------------------------- images


@dataclass
class Prepared:
    data: bytes  # what is uploaded
    ext: str  # ".png" or ".jpg"
    size: tuple[int, int]  # (width, height) after EXIF orientation: the size the result will have
    sha256: str  # of the input file
    stat: os.stat_result
    alpha: Image.Image | None  # the input's alpha channel, put back on the result
    exif: bytes | None  # the input's EXIF with orientation reset, copied onto the result


def _read_error(path: Path, exc: BaseException) -> ImageReadError:
    if isinstance(exc, Image.UnidentifiedImageError):  # its text names a BytesIO object, not the file
        detail = "not an image Pillow can identify (unknown or damaged format)"
    else:
        detail = str(exc) or type(exc).__name__
    return ImageReadError(
        f"cannot read image {path}: {detail}. The file may be damaged, truncated, or not really a "
        f"{path.suffix or 'image'} file; open it in an image viewer, save it again as JPEG or PNG, and rerun"
    )


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit scans: scale to 8 bits instead of clipping everything above 255 to white
        hi = 65535.0 if img.mode.startswith("I;16") or (img.getextrema()[1] or 0) > 255 else 255.0
        return img.convert("I").point(lambda v: v * (255.0 / hi)).convert("L")
    if img.mode == "F":
        return img.point(lambda v: v * 255.0).convert("L")
    if img.mode in ("RGB", "L", "RGBA"):
        return img
    if img.mode in ("LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img.convert("RGB")  # CMYK, YCbCr, P, 1, LAB, HSV


def prepare_upload(path: Path) -> Prepared:
    """Read ``path``, apply its EXIF orientation, and return what to upload (raises :class:`ImageReadError`).

    JPEG/PNG files that need no rotation or conversion are uploaded byte for byte; everything else (rotated
    photos, WebP/TIFF/BMP, 16-bit scans, CMYK) is re-encoded as a lossless PNG of the upright 8-bit image, so
    the server sees exactly the pixels the user sees in a photo viewer. Multi-page TIFFs use the first page.
    """
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageReadError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"convert it to one of {', '.join(IMAGE_EXTENSIONS)} and rerun"
        )
    try:
        stat = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise ImageReadError(f"cannot read {path}: {reason}; check that it exists and is readable") from exc
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # decodes everything: truncated/corrupt files fail here, not on the server
            fmt = img.format
            frames = getattr(img, "n_frames", 1)
            exif = img.getexif()
            orientation = exif.get(0x0112, 1)
            upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
            converted = _to_8bit(upright)
            unchanged = upright is img and converted is img
            size = converted.size
            alpha = converted.getchannel("A") if converted.mode == "RGBA" else None
            if fmt in _PASSTHROUGH_FORMATS and unchanged and frames == 1 and img.mode in _PASSTHROUGH_MODES:
                data, ext = raw, _PASSTHROUGH_FORMATS[fmt]
            else:
                buf = io.BytesIO()
                converted.save(buf, format="PNG", compress_level=1)
                data, ext = buf.getvalue(), ".png"
            exif_bytes = None
            if len(exif):
                if 0x0112 in exif:
                    exif[0x0112] = 1
                exif_bytes = exif.tobytes()
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... for bad files
        raise _read_error(path, exc) from exc
    if size[0] < 1 or size[1] < 1:
        raise ImageReadError(f"{path}: the image is empty ({size[0]}x{size[1]} pixels)")
    return Prepared(data=data, ext=ext, size=size, sha256=digest, stat=stat, alpha=alpha, exif=exif_bytes)


def finalize_output(png: bytes, prepared: Prepared) -> bytes:
    """The server's PNG, with the input's alpha channel and EXIF added back when the input had them.

    Raises ``ValueError`` if the server's image does not have the input's size (a workflow that resizes its
    output cannot get the alpha channel back).
    """
    if prepared.alpha is None and prepared.exif is None:
        return png
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        text = {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
        out = img.convert("RGB")
    if prepared.alpha is not None:
        if out.size != prepared.alpha.size:
            raise ValueError(
                f"the server returned a {out.size[0]}x{out.size[1]} image for a "
                f"{prepared.alpha.size[0]}x{prepared.alpha.size[1]} input, so its transparency cannot be restored"
            )
        out = out.convert("RGBA")
        out.putalpha(prepared.alpha)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():  # ComfyUI's embedded prompt/workflow
        info.add_text(key, value)
    buf = io.BytesIO()
    kwargs = {"exif": prepared.exif} if prepared.exif else {}
    out.save(buf, format="PNG", pnginfo=info, compress_level=4, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------ command-line value checks
# (argparse ``type=`` functions shared by the batch tool and the archive tool)


def input_size_arg(text: str) -> int:
    """``--input-size``: a whole number of pixels, a multiple of 32 between 64 and 2048."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 64 or value > 2048 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} must be a multiple of 32 between 64 and 2048 (e.g. 512)")
    return value


def positive_int_arg(text: str) -> int:
    """A count given on the command line: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# ------------------------------------------------------------------------------ console
# (shared by the batch tool and the archive tool)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with the console ready first (file names in any script, whatever the console's
    code page, also in argparse's errors) and logging set up after (debug with ``--verbose``)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    return args


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    seconds = max(0, int(seconds + 0.5))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
