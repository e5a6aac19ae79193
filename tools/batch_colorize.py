"""Colorize a whole folder of photos through a running ComfyUI server (resumable).

Usage (from the ComfyUI-DDColor folder, with ComfyUI's Python)::

    python -m tools.batch_colorize PHOTOS -o PHOTOS_colorized
    python tools/batch_colorize.py PHOTOS -o OUT --preset building --compare --server http://192.168.1.20:8188

Every image under PHOTOS (jpg, jpeg, png, webp, tif, tiff, bmp; sub-folders included) is uploaded, colorized
by the workflow and saved as ``OUT/<same sub-folder>/<name>.png``. Run the same command again after a crash,
Ctrl-C or a server restart: finished images are skipped (``OUT/.ddcolor-batch.json`` records what was made
from what), so at most the images that were in flight are redone. One run writes to OUT at a time
(``OUT/.ddcolor-batch.lock``): a second run on the same OUT exits with status 2 and says so.

Uploads go to the server's ``input/ddcolor_batch/`` (named by content hash, so a rerun or a second run with the
same photos does not upload duplicates) and the server keeps its own copy of each result under
``output/ddcolor_batch/``, as it does for any workflow; delete those folders on the server when done.

Exit codes: 0 all done, 1 some images failed (listed at the end), 2 usage or setup error (nothing done),
130/143 stopped by Ctrl-C / SIGTERM (rerun to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

if __package__ in (None, ""):  # run as "python tools/batch_colorize.py": make "tools" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.api_workflow import (  # noqa: E402
    PRESET_FILES,
    Settings,
    WorkflowError,
    WorkflowInfo,
    apply_settings,
    fingerprint_view,
    for_image,
    load_workflow,
    parse_override,
    preset_path,
)
from tools.batch_jobs import (  # noqa: E402
    IMAGE_EXTENSIONS,
    ImageReadError,
    InputError,
    Job,
    Manifest,
    OutputLock,
    check_output_dir,
    discover,
    finalize_output,
    plan_jobs,
    prepare_upload,
    remove_partials,
    settings_hash,
    write_atomic,
)
from tools.comfy_client import (  # noqa: E402
    ComfyClient,
    HTTPError,
    ServerUnavailableError,
    format_prompt_error,
    history_error,
    normalise_url,
)

log = logging.getLogger("ComfyUI-DDColor.batch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
UPLOAD_SUBFOLDER = "ddcolor_batch"
OUTPUT_PREFIX = "ddcolor_batch/img"
TOOL_FORMAT = 1  # bump when the tool's own processing changes results (invalidates every manifest entry)


# --------------------------------------------------------------------------------------------- progress


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """A one-line bar on a terminal (redrawn in place); one line per finished image when not a terminal."""

    def __init__(self, total: int, stream: TextIO, enabled: bool = True):
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.ok = self.failed = 0
        self.t0 = time.monotonic()
        self.status = ""
        self._last_draw = 0.0
        self._drawn = False

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.ok / elapsed if elapsed > 0 and self.ok else 0.0  # failures (often instant) are not work done
        pace = self.finished / elapsed if elapsed > 0 and self.finished else 0.0
        eta = (self.total - self.finished) / pace if rate and pace else None
        pct = 100.0 * self.finished / self.total if self.total else 100.0
        width = 20
        filled = int(width * self.finished / self.total) if self.total else width
        parts = [
            f"[{'#' * filled}{'.' * (width - filled)}] {self.finished}/{self.total} {pct:3.0f}%",
            f"{rate:.2f} img/s",
            f"ETA {_fmt_duration(eta) if eta is not None else '?'}",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.status:
            parts.append(self.status)
        return " | ".join(parts)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        cols = shutil.get_terminal_size((100, 20)).columns
        self._write("\r" + self.line()[: cols - 1].ljust(cols - 1))
        self._drawn = True

    def note(self, message: str) -> None:
        """A message above the bar (it stays in the scrollback); shown even with --no-progress."""
        if self.tty and self._drawn:
            cols = shutil.get_terminal_size((100, 20)).columns
            self._write("\r" + " " * (cols - 1) + "\r")
        self._write(message + "\n")
        self.draw(force=True)

    def set_status(self, status: str) -> None:
        self.status = status
        self.draw()

    def done(self, job: Job, ok: bool, reason: str = "") -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if not self.status.startswith("server"):
            self.status = ""
        if not self.enabled:
            return
        if self.tty:
            if not ok:
                self.note(f"FAILED {job.rel}: {reason}")
            self.draw(force=True)
        else:
            word = "ok" if ok else f"FAILED ({reason})"
            self._write(f"{self.line()} | {job.rel} {word}\n")

    def close(self) -> None:
        if self.tty and self._drawn:
            self._write("\n")


# --------------------------------------------------------------------------------------------- runner


@dataclass
class Outcome:
    job: Job
    ok: bool
    reason: str = ""


class Runner:
    """Feeds the jobs through the server, ``max_in_flight`` at a time, and records finished ones."""

    def __init__(
        self,
        client: ComfyClient,
        out_dir: Path,
        workflow: dict,
        info: WorkflowInfo,
        settings_id: str,
        manifest: Manifest,
        progress: Progress,
        max_in_flight: int = 2,
        max_attempts: int = 3,
    ):
        self.client = client
        self.out_dir = out_dir
        self.workflow = workflow
        self.info = info
        self.settings_id = settings_id
        self.manifest = manifest
        self.progress = progress
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.inflight: dict[str, Job] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.stop = asyncio.Event()
        self.stop_reason = ""
        self.stop_signal = 0
        self._down_noted = False
        self.fatal: str | None = None
        self.outcomes: list[Outcome] = []
        self.unfinished: list[Job] = []
        self.active: dict[int, Job] = {}

    # ---------------------------------------------------------------- server events

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if kind in ("_connected", "_disconnected"):
            for ev in self.events.values():  # events may have been missed: re-check everything in flight
                ev.set()
            if kind == "_disconnected" and not self.stop.is_set():
                self.progress.set_status("connection lost, reconnecting")
            elif kind == "_connected":
                if self._down_noted:
                    self.progress.note("connected to the server again")
                self._down_noted = False
                self.progress.set_status("")
            return
        pid = data.get("prompt_id")
        if pid not in self.events:
            return
        if kind in ("execution_success", "execution_error", "execution_interrupted") or (
            kind == "executing" and data.get("node") is None
        ):
            self.events[pid].set()
        elif kind == "progress" and data.get("max"):
            job = self.inflight.get(pid)
            if job is not None:
                self.progress.set_status(f"{job.rel} {int(data.get('value', 0))}/{int(data['max'])}")

    def on_retry(self, reason: str, waited: float) -> None:
        if not self._down_noted:
            self._down_noted = True
            self.progress.note(f"the server is unreachable ({reason}); retrying for up to "
                               f"{self.client.retry_timeout:.0f} s, nothing is lost meanwhile")
        self.progress.set_status(f"server unreachable ({reason}), retrying for {waited:.0f}s")

    async def _wait(self, pid: str) -> dict | None:
        """The ``/history`` entry of ``pid`` once it finished, or ``None`` if the server lost it (restart)."""
        event = self.events[pid]
        while True:
            timeout = 15.0 if self.client.ws_connected else 2.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            event.clear()
            entry = await self.client.history(pid)
            if entry is not None:
                return entry
            if pid in await self.client.queued_ids():
                continue
            # not queued any more: finished in between (then it is in the history now) or lost
            return await self.client.history(pid)

    # ---------------------------------------------------------------- one image

    async def process(self, job: Job) -> Outcome:
        try:
            prepared = await asyncio.to_thread(prepare_upload, job.src)
        except ImageReadError as exc:
            return Outcome(job, False, str(exc))
        for attempt in range(1, self.max_attempts + 1):
            try:
                image_name = await self.client.upload_image(
                    prepared.data, f"{prepared.sha256[:32]}{prepared.ext}", UPLOAD_SUBFOLDER
                )
                workflow = for_image(self.workflow, self.info, image_name, f"{OUTPUT_PREFIX}_{prepared.sha256[:12]}")
                pid = str(uuid.uuid4())  # canonical form: newer ComfyUI rejects other ids
                self.inflight[pid] = job  # registered before queueing, so Ctrl-C can always cancel it
                self.events[pid] = asyncio.Event()
                try:
                    try:
                        server_pid = await self.client.queue_prompt(workflow, pid)
                    except HTTPError as exc:
                        if exc.status == 400:
                            return Outcome(job, False, f"the server rejected the workflow: "
                                                       f"{format_prompt_error(exc.json or exc.body.decode())}")
                        raise
                    if server_pid != pid:  # a server too old to take our id
                        self.inflight[server_pid] = self.inflight.pop(pid)
                        self.events[server_pid] = self.events.pop(pid)
                        pid = server_pid
                    entry = await self._wait(pid)
                finally:
                    self.inflight.pop(pid, None)
                    self.events.pop(pid, None)
                if entry is None:
                    if attempt < self.max_attempts:
                        self.progress.note(
                            f"{job.rel}: the server lost this image (restarted?); sending it again "
                            f"(attempt {attempt + 1} of {self.max_attempts})"
                        )
                    continue
                problem = history_error(entry)
                if problem:
                    return Outcome(job, False, problem)
                return await self._save(job, prepared, entry)
            except ServerUnavailableError:
                raise  # ends the whole batch (the job stays unfinished, not failed)
            except (HTTPError, RuntimeError, OSError, ValueError) as exc:
                return Outcome(job, False, f"{type(exc).__name__}: {exc}")
        return Outcome(
            job, False, f"the server lost this image {self.max_attempts} times (it restarted or crashed while "
                        f"working on it); look at the ComfyUI log, then rerun"
        )

    def _images(self, entry: dict, node_id: str | None) -> list[dict]:
        outputs = entry.get("outputs") or {}
        node = outputs.get(node_id) if node_id is not None else None
        return list((node or {}).get("images") or [])

    async def _save(self, job: Job, prepared, entry: dict) -> Outcome:
        result = self._images(entry, self.info.result_id)
        if not result:
            return Outcome(job, False, f"the server finished but returned no image from node {self.info.result_id}")
        png = await self.client.view(result[0])
        data = await asyncio.to_thread(finalize_output, png, prepared)
        want_compare = self.info.compare_out_id is not None
        if want_compare:
            shots = self._images(entry, self.info.compare_out_id)
            if not shots:
                return Outcome(job, False, "the server finished but returned no comparison image")
            write_atomic(job.compare_path(self.out_dir), await self.client.view(shots[0]))
        write_atomic(job.out_path(self.out_dir), data)  # the result last: it marks the job as done
        self.manifest.record(job, self.settings_id, prepared.sha256, prepared.stat, want_compare)
        self.manifest.save()
        return Outcome(job, True)

    # ---------------------------------------------------------------- the batch

    async def _worker(self, queue: asyncio.Queue) -> None:
        while not self.stop.is_set():
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self.active[id(job)] = job
            outcome = await self.process(job)  # on cancellation or a lost server the job stays "active"
            del self.active[id(job)]
            self.outcomes.append(outcome)
            self.progress.done(job, outcome.ok, outcome.reason)

    async def run(self, jobs: Sequence[Job]) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        listener = asyncio.create_task(self.client.listen(self.on_event))
        ticker = asyncio.create_task(self._tick())
        workers = {asyncio.create_task(self._worker(queue)) for _ in range(max(1, self.max_in_flight))}
        stopper = asyncio.create_task(self.stop.wait())
        try:
            while workers and not self.stop.is_set():
                finished, _ = await asyncio.wait(workers | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in finished - {stopper}:
                    workers.discard(task)
                    exc = task.exception()
                    if isinstance(exc, ServerUnavailableError):
                        self.fatal = str(exc)
                        self.stop.set()
                    elif exc is not None:
                        raise exc
            if workers:  # stopped: cancel what is queued on the server, then our tasks
                in_flight = list(self.inflight)
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                if in_flight and self.fatal is None:
                    try:
                        await asyncio.wait_for(self.client.cancel(in_flight), 10)
                        self.progress.note(f"cancelled {len(in_flight)} image(s) queued on the server")
                    except (ServerUnavailableError, HTTPError, asyncio.TimeoutError) as exc:
                        self.progress.note(f"could not cancel our queued images on the server: {exc}")
        finally:
            self.unfinished = list(self.active.values()) + [queue.get_nowait() for _ in range(queue.qsize())]
            for task in (stopper, listener, ticker, *workers):
                task.cancel()
            await asyncio.gather(stopper, listener, ticker, *workers, return_exceptions=True)

    async def _tick(self) -> None:
        while True:  # keeps the rate and ETA moving while a slow image is being colorized
            await asyncio.sleep(1.0)
            self.progress.draw()


# --------------------------------------------------------------------------------------------- preflight


def _combo_options(spec: object) -> list | None:
    """The allowed values of a combo input in ``/object_info`` (both the V1 and the V3 layout)."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


async def preflight(client: ComfyClient, workflow: dict, info: WorkflowInfo) -> str | None:
    """``None`` if the server can run ``workflow``, else a message saying what is missing and what to do."""
    try:
        stats = await client.system_stats(retry=False)
    except (ServerUnavailableError, HTTPError) as exc:
        detail = str(exc) if isinstance(exc, ServerUnavailableError) else f"cannot reach ComfyUI at {client.url}: {exc}"
        return (f"{detail}. Start ComfyUI, or point --server at it "
                f"(e.g. --server http://192.168.1.20:8188; a server on another machine needs --listen)")
    version = (stats or {}).get("system", {}).get("comfyui_version", "?") if isinstance(stats, dict) else "?"
    log.debug("ComfyUI %s at %s", version, client.url)
    for class_type in sorted({n["class_type"] for n in workflow.values()}):
        definition = await client.object_info(class_type)
        if definition is None:
            hint = ("install ComfyUI-DDColor into ComfyUI/custom_nodes and restart the server (if it is installed, "
                    "its import failed: look for 'ComfyUI-DDColor' in the server log)"
                    if class_type.startswith("DDColor") else "install the custom node that provides it")
            return f"the server at {client.url} has no node {class_type!r}: {hint}"
        spec = definition.get("input") or {}
        inputs = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        for node_id, node in workflow.items():
            if node["class_type"] != class_type:
                continue
            for key, value in node["inputs"].items():
                options = _combo_options(inputs.get(key))
                if options is None or isinstance(value, list) or value in options or node_id == info.load_id:
                    continue
                if key == "model_name":
                    available = ", ".join(map(str, options)) or "none"
                    return (f"model {value!r} is not on the server (models/ddcolor has: {available}); copy the "
                            f"weights into ComfyUI/models/ddcolor or pick one with --model")
                return (f"node {node_id} ({class_type}): {key} = {value!r} is not accepted by the server; "
                        f"choose one of: {', '.join(map(str, options))}")
    return None


# --------------------------------------------------------------------------------------------- CLI


def _input_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 64 or value > 2048 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} must be a multiple of 32 between 64 and 2048 (e.g. 512)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.batch_colorize",
        description="Colorize a folder of black-and-white photos through a running ComfyUI server with "
        "ComfyUI-DDColor. Rerun the same command to resume after a crash or Ctrl-C.",
        epilog="Exit codes: 0 all done, 1 some images failed, 2 usage/setup error, 130/143 interrupted. "
        "Arguments can be read from a file: @list.txt (one per line).",
        fromfile_prefix_chars="@",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"folder(s) (searched recursively for {', '.join(IMAGE_EXTENSIONS)}) or image files")
    parser.add_argument("-o", "--output", type=Path,
                        help="output folder, mirroring the input tree (default: <input folder>_colorized)")
    flow = parser.add_mutually_exclusive_group()
    flow.add_argument("--preset", choices=sorted(PRESET_FILES), default="portrait",
                      help="shipped workflow: portrait (faces, people) or building (scenes); default portrait")
    flow.add_argument("--workflow", type=Path, help="any API-format workflow with the DDColor nodes instead")
    parser.add_argument("--model", help="weights file in ComfyUI/models/ddcolor (default: the workflow's)")
    parser.add_argument("--precision", help="fp32, fp16, bf16 or auto (default: the workflow's)")
    parser.add_argument("--device", help="auto or cpu (default: the workflow's)")
    parser.add_argument("--input-size", type=_input_size, metavar="PX",
                        help="fixed model input size (multiple of 32) instead of the preset's choice")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.input=VALUE",
                        help="set any node input, NODE being a class_type or node id "
                        "(e.g. DDColorMergeLab.chroma=1.2); repeatable")
    parser.add_argument("--compare", action="store_true", help="also write <name>.compare.png (before/after)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI URL (default %(default)s)")
    parser.add_argument("--max-in-flight", type=_positive, default=2, metavar="N",
                        help="images queued on the server at once (default 2)")
    parser.add_argument("--retry-timeout", type=float, default=300.0, metavar="SEC",
                        help="how long to keep retrying an unreachable server before giving up (default 300)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be done, send nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


@dataclass
class Plan:
    out_dir: Path
    todo: list[Job]
    skipped: list[Job]
    ignored: list[Path]
    workflow: dict
    info: WorkflowInfo
    settings_id: str
    manifest: Manifest


def make_plan(args: argparse.Namespace, hold: contextlib.ExitStack | None = None) -> Plan:
    """Everything decided before talking to the server (raises InputError / WorkflowError / ValueError).

    With ``hold``, the output folder's :class:`OutputLock` is taken before its manifest is read and stays
    held until ``hold`` closes.
    """
    wf_path = args.workflow if args.workflow is not None else preset_path(args.preset)
    workflow = load_workflow(wf_path)
    overrides = tuple(parse_override(text) for text in args.overrides)
    settings = Settings(model=args.model, precision=args.precision, device=args.device,
                        input_size=args.input_size, compare=args.compare, overrides=overrides)
    patched, info = apply_settings(workflow, settings, wf_path.name)
    plain, plain_info = apply_settings(workflow, Settings(**{**settings.__dict__, "compare": False}), wf_path.name)
    settings_id = settings_hash({"tool": TOOL_FORMAT, "workflow": fingerprint_view(plain, plain_info)})

    first = Path(args.inputs[0]).expanduser()
    out_dir = args.output
    if out_dir is None:
        if len(args.inputs) != 1 or not first.is_dir():
            raise InputError("name an output folder with -o when the input is not a single folder")
        out_dir = first.resolve().parent / f"{first.resolve().name}_colorized"
    out_dir = out_dir.expanduser().resolve()
    found = discover(args.inputs, exclude=out_dir)
    if not found.files:
        raise InputError(f"no images found in {', '.join(args.inputs)} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    jobs = plan_jobs(found.files, found.base)
    input_dirs = [Path(p).expanduser() for p in args.inputs if Path(p).expanduser().is_dir()]
    check_output_dir(out_dir, jobs, input_dirs)
    if hold is not None:
        hold.enter_context(OutputLock(out_dir))
    manifest = Manifest(out_dir)
    todo, skipped = [], []
    for job in jobs:
        done, _digest = manifest.check_done(job, settings_id, args.compare)
        (skipped if done else todo).append(job)
    return Plan(out_dir, todo, skipped, found.ignored, patched, info, settings_id, manifest)


def summary(plan: Plan, outcomes: Sequence[Outcome], unfinished: Sequence[Job], seconds: float,
            stop_reason: str, fatal: str | None) -> str:
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    lines = []
    if not plan.todo:
        lines.append(f"Nothing to do: all {len(plan.skipped)} images in {plan.out_dir} are already colorized "
                     f"(skipped {len(plan.skipped)}).")
    elif not done and plan.skipped and not unfinished and not fatal:
        lines.append(f"Nothing new colorized: {len(plan.skipped)} image(s) in {plan.out_dir} already done "
                     f"(skipped {len(plan.skipped)}); {len(failed)} failed again.")
    else:
        rate = f", {len(done) / seconds:.2f} images/s" if done and seconds > 0 else ""
        lines.append(f"Colorized {len(done)} image(s) into {plan.out_dir} in {_fmt_duration(seconds)}{rate}; "
                     f"skipped {len(plan.skipped)} already done; {len(failed)} failed.")
    if failed:
        lines.append("Failed:")
        lines.extend(f"  {o.job.rel}: {o.reason}" for o in failed)
    if plan.ignored:
        sample = ", ".join(p.name for p in plan.ignored[:3])
        lines.append(f"Ignored {len(plan.ignored)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} "
                     f"(e.g. {sample}).")
    if fatal:
        lines.append(f"Stopped: {fatal}")
    elif stop_reason:
        lines.append(f"Stopped by {stop_reason}.")
    if unfinished:
        lines.append(f"{len(unfinished)} image(s) not done yet; run the same command again to resume.")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, plan: Plan, progress: Progress) -> tuple[Runner | None, str | None]:
    loop = asyncio.get_running_loop()
    async with ComfyClient(args.server, retry_timeout=args.retry_timeout) as client:
        problem = await preflight(client, plan.workflow, plan.info)
        if problem:
            return None, problem
        runner = Runner(client, plan.out_dir, plan.workflow, plan.info, plan.settings_id, plan.manifest, progress,
                        max_in_flight=args.max_in_flight)
        client.on_retry = runner.on_retry

        def on_signal(signum: int) -> None:
            if runner.stop.is_set():
                sys.stderr.write("\nstopping at once; rerun the same command to resume\n")
                os._exit(128 + signum)  # every file on disk is complete (atomic writes), so this loses nothing
            runner.stop_reason = signal.Signals(signum).name
            runner.stop_signal = signum
            progress.note(f"{runner.stop_reason}: cancelling the images in flight "
                          f"(press Ctrl-C again to quit at once)")
            runner.stop.set()

        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # Windows: plain handlers, forwarded to the loop
                signal.signal(signum, lambda s, _f: loop.call_soon_threadsafe(on_signal, s))
        try:
            await runner.run(plan.todo)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        return runner, None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the batch started (scanning, hashing, connecting)
        sys.stderr.write("\ninterrupted before anything was sent; rerun the same command to start again\n")
        return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names in any script, whatever the console's code page
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    with contextlib.ExitStack() as stack:
        try:
            args.server = normalise_url(args.server)
            # a dry run only reads; a real run holds the output folder's lock until it ends, however it ends
            plan = make_plan(args, hold=None if args.dry_run else stack)
        except (InputError, WorkflowError, ValueError, OSError) as exc:
            parser.exit(EXIT_USAGE, f"error: {exc}\n")
        if args.dry_run:
            for job in plan.todo:
                sys.stdout.write(f"todo  {job.rel} -> {job.out_rel}\n")
            for job in plan.skipped:
                sys.stdout.write(f"done  {job.rel} -> {job.out_rel}\n")
            sys.stdout.write(f"{len(plan.todo)} to colorize, {len(plan.skipped)} already done "
                             f"(dry run, nothing sent)\n")
            return EXIT_OK
        return _colorize(args, plan)


def _colorize(args: argparse.Namespace, plan: Plan) -> int:
    removed = remove_partials(plan.out_dir)
    if removed:
        log.warning("removed %d unfinished temporary file(s) left in %s by an interrupted run", removed, plan.out_dir)
    if not plan.todo:
        sys.stdout.write(summary(plan, [], [], 0.0, "", None) + "\n")
        return EXIT_OK
    progress = Progress(len(plan.todo), sys.stderr, enabled=not args.no_progress)
    if plan.skipped:
        progress.note(f"{len(plan.skipped)} image(s) already done in {plan.out_dir}, skipping them")
    t0 = time.monotonic()
    runner, problem = asyncio.run(_run(args, plan, progress))
    progress.close()
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        return EXIT_USAGE
    assert runner is not None
    sys.stdout.write(summary(plan, runner.outcomes, runner.unfinished, time.monotonic() - t0, runner.stop_reason,
                             runner.fatal) + "\n")
    if runner.stop_reason:
        return 128 + int(runner.stop_signal)
    if runner.fatal or any(not o.ok for o in runner.outcomes):
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
