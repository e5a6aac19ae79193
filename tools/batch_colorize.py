"""Colorize a whole folder of photos through a running ComfyUI server (resumable).

Usage (from the ComfyUI-DDColor folder, with ComfyUI's Python)::

    python -m tools.batch_colorize PHOTOS -o PHOTOS_colorized
    python tools/batch_colorize.py PHOTOS -o OUT --preset building --compare --server http://192.168.1.20:8188

Every image under PHOTOS (jpg, jpeg, png, webp, tif, tiff, bmp; sub-folders included) is uploaded, colorized
by the workflow and saved as ``OUT/<same sub-folder>/<name>.png``. Run the same command again after a crash,
Ctrl-C or a server restart: finished images are skipped (``OUT/.ddcolor-batch.json`` records what was made
from what), so at most the images that were in flight are redone. One run writes to OUT at a time
(``OUT/.ddcolor-batch.lock``): a second run on the same OUT exits with status 2 and says so.

Several servers share the work with ``--server`` repeated (``URL#N`` sets one server's in-flight limit) or
``--server-list FILE``: each takes photos as it has room; one that stops answering for ``DOWN_AFTER`` seconds
has its photos re-queued on the others and rejoins when it answers again. Every prompt carries a tag in its
``extra_data`` (output folder, input file, settings), so a rerun after ``kill -9`` collects what the killed run
had already queued instead of sending it again. The first prompt is the check of the workflow: a refusal is a
usage error, reported once with the server's reason.

The output folder may not be an input folder (or above one): the results would be picked up as inputs by the
next run. A folder inside the input folder is fine; it is never scanned.

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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    fmt_duration,
    input_size_arg,
    parse_command_line,
    plan_jobs,
    positive_int_arg,
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
DEFAULT_SERVER = "http://127.0.0.1:8188"
UPLOAD_SUBFOLDER = "ddcolor_batch"
OUTPUT_PREFIX = "ddcolor_batch/img"
TOOL_FORMAT = 1  # bump when the tool's own processing changes results (invalidates every manifest entry)


# --------------------------------------------------------------------------------------------- progress


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
            f"ETA {fmt_duration(eta) if eta is not None else '?'}",
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


DOWN_AFTER = 10.0  # seconds a server may stay unreachable before its photos in flight go back to the queue


@dataclass
class Outcome:
    job: Job
    ok: bool
    reason: str = ""
    server: str = ""


class _DrainedError(Exception):
    """The batch stopped taking work (a usage error or a fatal one) before this image was sent."""


class OutputWriteError(Exception):
    """The output folder cannot be written (full disk, read-only): ends the batch. Not an OSError on purpose."""


class _RejectedError(Exception):
    """``POST /prompt`` answered 400: the message is the server's reason."""


@dataclass(eq=False)
class Slot:
    """One ComfyUI server of the batch, with its own in-flight limit and its own counts."""

    url: str
    limit: int
    client: ComfyClient | None = None
    up: bool = False
    usable: bool = True  # False once the server proved unable to run the workflow (missing node or model)
    checked: bool = False  # the preflight check passed once
    done: int = 0
    failed: int = 0
    inflight: dict[str, Job] = field(default_factory=dict)  # prompt id -> job
    events: dict[str, asyncio.Event] = field(default_factory=dict)
    found: dict[str, str] = field(default_factory=dict)  # job tag -> id of our prompt already on this server
    mine: deque = field(default_factory=deque)  # jobs whose prompt (from an earlier run) is on this server
    woke: asyncio.Event = field(default_factory=asyncio.Event)
    prober: asyncio.Task | None = None
    down_noted: bool = False


def job_tag(job: Job, out_dir: Path, settings_id: str, compare: bool) -> str:
    """What identifies one image's prompt on a server (kept in its ``extra_data``).

    Same output folder, same input file (path, size, mtime), same settings. A run killed with ``kill -9`` leaves
    its prompts running on the server; the next run into the same folder finds them by this tag and collects
    their results instead of queueing the photos again.
    """
    try:
        stat = job.src.stat()
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        fingerprint = "?"
    return settings_hash({"settings": settings_id, "out": str(out_dir), "input": str(job.src), "out_rel": job.out_rel,
                          "file": fingerprint, "compare": compare})


class Runner:
    """Feeds the jobs to one or more servers (each ``slot.limit`` at a time) and records finished ones.

    A server that stays unreachable for :data:`DOWN_AFTER` seconds is set aside: its photos in flight go back to
    the queue for the others, and a probe brings it back when it answers again. The batch ends with a fatal
    error only when no server has been reachable for ``retry_timeout`` seconds.
    """

    def __init__(
        self,
        slots: Sequence[Slot],
        out_dir: Path,
        workflow: dict,
        info: WorkflowInfo,
        settings_id: str,
        manifest: Manifest,
        progress: Progress,
        max_attempts: int = 3,
        retry_timeout: float = 300.0,
    ):
        self.slots = list(slots)
        self.out_dir = out_dir
        self.workflow = workflow
        self.info = info
        self.settings_id = settings_id
        self.manifest = manifest
        self.progress = progress
        self.max_attempts = max_attempts
        self.retry_timeout = retry_timeout
        self.compare = info.compare_out_id is not None
        self.stop = asyncio.Event()
        self.stop_reason = ""
        self.stop_signal = 0
        self.fatal: str | None = None
        self.usage_error: str | None = None  # the workflow itself is refused: exit 2
        self.draining = False
        self.validated = asyncio.Event()
        self._probe_lock = asyncio.Lock()
        self.outcomes: list[Outcome] = []
        self.unfinished: list[Job] = []
        self.queue: deque[Job] = deque()
        self.state: dict[str, str] = {}  # out_rel -> "queued" | "active" | "done"
        self.tags: dict[str, str] = {}  # out_rel -> job tag
        self.by_tag: dict[str, Job] = {}
        self.home: dict[str, Slot] = {}  # out_rel -> the server that already has its prompt
        self.lost: dict[str, int] = {}
        self.remaining = 0
        self._all_down_since: float | None = None

    # ---------------------------------------------------------------- server events

    def on_event(self, slot: Slot, event: dict) -> None:
        kind = event.get("type")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if kind in ("_connected", "_disconnected"):
            for ev in slot.events.values():  # events may have been missed: re-check everything in flight
                ev.set()
            return
        pid = data.get("prompt_id")
        if pid not in slot.events:
            return
        if kind in ("execution_success", "execution_error", "execution_interrupted") or (
            kind == "executing" and data.get("node") is None
        ):
            slot.events[pid].set()
        elif kind == "progress" and data.get("max"):
            job = slot.inflight.get(pid)
            if job is not None:
                self.progress.set_status(f"{job.rel} {int(data.get('value', 0))}/{int(data['max'])}")

    def on_retry(self, slot: Slot, reason: str, waited: float) -> None:
        self.progress.set_status(f"server {slot.url} unreachable ({reason}), retrying for {waited:.0f}s")

    def _name(self, slot: Slot) -> str:
        return "the server" if len(self.slots) == 1 else slot.url

    # ---------------------------------------------------------------- servers joining and leaving

    async def _join(self, slot: Slot) -> bool:
        """Check ``slot`` (reachable, can run the workflow), find our prompts on it, mark it up."""
        client = slot.client
        assert client is not None
        try:
            stats = await client.system_stats(retry=False)
            version = stats.get("system", {}).get("comfyui_version", "?") if isinstance(stats, dict) else "?"
            log.debug("ComfyUI %s at %s", version, slot.url)
            if not slot.checked:
                problem = await preflight(client, self.workflow, self.info)
                if problem:
                    slot.usable = False
                    slot.woke.set()
                    self.progress.note(f"not using {slot.url}: {problem}")
                    return False
                slot.checked = True
            await self._scan(slot)
        except (ServerUnavailableError, HTTPError, RuntimeError) as exc:
            log.debug("%s: not up yet: %s", slot.url, exc)
            return False
        slot.up = True
        slot.woke.set()
        self._all_down_since = None
        return True

    async def _scan(self, slot: Slot) -> None:
        """Find prompts of ours (same photo, same settings) already queued, running or done on ``slot``."""
        assert slot.client is not None
        slot.found.clear()
        waiting = {tag: job for tag, job in self.by_tag.items() if self.state[job.out_rel] == "queued"}
        if not waiting:
            return
        found: dict[str, str] = {}
        for pid, entry in (await slot.client.history_all()).items():
            tag = _tag_of(entry.get("prompt") if isinstance(entry, dict) else None)
            if tag in waiting and history_error(entry) is None:
                found[tag] = str(pid)
        for item in await slot.client.queue_items():
            tag = _tag_of(item)
            if tag in waiting and tag not in found:
                found[tag] = str(item[1])
        for tag, pid in found.items():
            job = waiting[tag]
            slot.found[tag] = pid
            slot.mine.append(job)
            self.home[job.out_rel] = slot
        if found:
            self.progress.note(f"{slot.url}: {len(found)} photo(s) of an earlier run are queued or done there "
                               f"already; collecting their results instead of sending them again")

    async def _probe(self, slot: Slot) -> None:
        """Poll a server that is down until it answers, then let it rejoin."""
        delay = 1.0
        while not self.draining and slot.usable:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            if await self._join(slot):
                self.progress.note(f"{slot.url} answers again; it takes photos again")
                slot.down_noted = False
                return

    def _mark_down(self, slot: Slot, reason: str) -> None:
        if slot.up:
            slot.up = False
            slot.woke.clear()
            others = [s for s in self.slots if s.up]
            where = ("go back to the queue for the other server(s)" if others
                     else "will be sent again when a server answers")
            self.progress.note(f"{slot.url} is unreachable ({reason}); its photos in flight {where}; "
                               f"it rejoins when it answers again")
            for job in slot.mine:  # prompts of an earlier run on it: anyone may do them now
                self.home.pop(job.out_rel, None)
                if self.state[job.out_rel] == "queued":
                    self.queue.appendleft(job)
            slot.mine.clear()
            slot.found.clear()
        if slot.prober is None or slot.prober.done():
            slot.prober = asyncio.create_task(self._probe(slot))

    def _drain(self) -> None:
        self.draining = True
        for slot in self.slots:
            slot.woke.set()

    # ---------------------------------------------------------------- the queue

    def _take(self, slot: Slot) -> Job | None:
        while slot.mine:
            job = slot.mine.popleft()
            if self.state[job.out_rel] == "queued":
                return job
        skipped = []
        job = None
        while self.queue:
            candidate = self.queue.popleft()
            if self.state[candidate.out_rel] != "queued":
                continue  # a stale entry (the job went back to the queue and was taken meanwhile)
            home = self.home.get(candidate.out_rel)
            if home is not None and home is not slot and home.up:
                skipped.append(candidate)  # its prompt waits on another server: that one collects it
                continue
            job = candidate
            break
        self.queue.extendleft(reversed(skipped))
        if job is not None:
            self.home.pop(job.out_rel, None)
        return job

    def _requeue(self, job: Job) -> None:
        self.state[job.out_rel] = "queued"
        self.queue.appendleft(job)

    def _finish(self, outcome: Outcome, slot: Slot) -> None:
        self.state[outcome.job.out_rel] = "done"
        self.remaining -= 1
        outcome.server = slot.url
        if outcome.ok:
            slot.done += 1
        else:
            slot.failed += 1
        self.outcomes.append(outcome)
        self.progress.done(outcome.job, outcome.ok, outcome.reason)
        if self.remaining == 0:  # wake the workers of servers that are down, so that they end too
            for other in self.slots:
                other.woke.set()

    async def _worker(self, slot: Slot) -> None:
        while not self.draining and self.remaining > 0:
            if not slot.up:
                if not slot.usable:
                    return
                await slot.woke.wait()  # set when it is up again, unusable, or the batch is ending
                continue
            job = self._take(slot)
            if job is None:
                await asyncio.sleep(0.2)  # everything left is in flight; some may come back
                continue
            self.state[job.out_rel] = "active"
            try:
                outcome = await self.process(job, slot)
            except ServerUnavailableError as exc:
                self._requeue(job)
                self._mark_down(slot, exc.reason)
                continue
            except _DrainedError:
                self._requeue(job)
                return
            except OutputWriteError as exc:
                self._requeue(job)
                self.fatal = str(exc)
                self._drain()
                return
            except asyncio.CancelledError:
                self.state[job.out_rel] = "queued"  # stopped: not failed, a rerun does it
                raise
            if outcome is None:  # the server lost the prompt (restarted while the photo was on it)
                count = self.lost[job.out_rel] = self.lost.get(job.out_rel, 0) + 1
                if count < self.max_attempts:
                    self.progress.note(f"{job.rel}: {self._name(slot)} lost this image (restarted?); sending it "
                                       f"again (attempt {count + 1} of {self.max_attempts})")
                    self._requeue(job)
                    continue
                outcome = Outcome(job, False, f"the server lost this image {self.max_attempts} times (it restarted "
                                              f"or crashed while working on it); look at the ComfyUI log, then rerun")
            self._finish(outcome, slot)

    # ---------------------------------------------------------------- one image

    async def _wait(self, slot: Slot, pid: str) -> dict | None:
        """The ``/history`` entry of ``pid`` once it finished, or ``None`` if the server lost it (restart)."""
        assert slot.client is not None
        event = slot.events[pid]
        first = True
        while True:
            if not first:  # a prompt of an earlier run may be finished already: look before waiting
                timeout = 15.0 if slot.client.ws_connected else 2.0
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
            first = False
            event.clear()
            entry = await slot.client.history(pid)
            if entry is not None and _finished(entry):
                return entry
            if entry is not None or pid in await slot.client.queued_ids():
                continue
            # not queued any more: finished in between (then it is in the history now) or lost
            return await slot.client.history(pid)

    async def _submit(self, slot: Slot, workflow: dict, pid: str, tag: str) -> tuple[str, str]:
        """Queue one prompt: ``(prompt id, reason some outputs were refused or "")``.

        The first prompt of the batch is the check of the workflow: until the server has accepted one, prompts
        go one at a time, and a refusal stops the batch as a usage error (it would be refused for every photo).
        """
        if self.validated.is_set():
            return await self._post(slot, workflow, pid, tag)
        async with self._probe_lock:
            if self.draining:
                raise _DrainedError
            if self.validated.is_set():
                return await self._post(slot, workflow, pid, tag)
            try:
                server_pid, partial = await self._post(slot, workflow, pid, tag)
            except _RejectedError as exc:
                self.usage_error = f"{slot.url} rejected the workflow, so no photo can be colorized with it: {exc}"
                self._drain()
                raise _DrainedError from None
            if partial:  # this photo still runs (its outputs that passed are kept); no other one is sent
                self.usage_error = (f"{slot.url} refused part of the workflow, so no photo can be fully "
                                    f"colorized with it: {partial}")
                self._drain()
            else:
                self.validated.set()
            return server_pid, partial

    async def _post(self, slot: Slot, workflow: dict, pid: str, tag: str) -> tuple[str, str]:
        assert slot.client is not None
        try:
            answer = await slot.client.submit(workflow, pid, {"ddcolor_batch": tag})
        except HTTPError as exc:
            if exc.status == 400:
                raise _RejectedError(format_prompt_error(exc.json or exc.body.decode("utf-8", "replace"))) from None
            raise
        errors = answer.get("node_errors")
        partial = format_prompt_error({"node_errors": errors}) if errors else ""
        return str(answer["prompt_id"]), partial

    async def process(self, job: Job, slot: Slot) -> Outcome | None:
        """Colorize one photo on ``slot``; ``None`` if the server lost it. Raises ServerUnavailableError."""
        assert slot.client is not None
        try:
            prepared = await asyncio.to_thread(prepare_upload, job.src)
        except ImageReadError as exc:
            return Outcome(job, False, str(exc))
        tag = self.tags[job.out_rel]
        found = slot.found.pop(tag, None)
        if found is not None:
            outcome = await self._attempt(job, slot, prepared, tag, found)
            if outcome is not None and outcome.ok:
                return outcome
            # the earlier run's prompt cannot be used (lost, failed, or its files were deleted on the server)
            log.debug("%s: the earlier prompt %s gave %s; colorizing it again", job.rel, found, outcome)
        return await self._attempt(job, slot, prepared, tag, None)

    async def _attempt(self, job: Job, slot: Slot, prepared, tag: str, pid: str | None) -> Outcome | None:
        """Send the photo (or, with ``pid``, follow a prompt already on the server) and save the result."""
        assert slot.client is not None
        partial = ""
        try:
            if pid is None:
                image_name = await slot.client.upload_image(
                    prepared.data, f"{prepared.sha256[:32]}{prepared.ext}", UPLOAD_SUBFOLDER
                )
                workflow = for_image(self.workflow, self.info, image_name, f"{OUTPUT_PREFIX}_{prepared.sha256[:12]}")
                pid = str(uuid.uuid4())  # canonical form: newer ComfyUI rejects other ids
                slot.inflight[pid] = job  # registered before queueing, so Ctrl-C can always cancel it
                slot.events[pid] = asyncio.Event()
                try:
                    server_pid, partial = await self._submit(slot, workflow, pid, tag)
                except _RejectedError as exc:
                    return Outcome(job, False, f"the server rejected the workflow: {exc}")
                if server_pid != pid:  # a server too old to take our id
                    slot.inflight[server_pid] = slot.inflight.pop(pid)
                    slot.events[server_pid] = slot.events.pop(pid)
                    pid = server_pid
            else:
                slot.inflight[pid] = job
                slot.events[pid] = asyncio.Event()
            entry = await self._wait(slot, pid)
        except (HTTPError, RuntimeError, ValueError) as exc:
            return Outcome(job, False, f"{type(exc).__name__}: {exc}")
        finally:
            if pid is not None:
                slot.inflight.pop(pid, None)
                slot.events.pop(pid, None)
        if entry is None:
            return None
        try:
            return await self._save(slot, job, prepared, entry, history_error(entry) or partial)
        except (HTTPError, RuntimeError, ValueError) as exc:
            return Outcome(job, False, f"{type(exc).__name__}: {exc}")

    def _images(self, entry: dict, node_id: str | None) -> list[dict]:
        outputs = entry.get("outputs") or {}
        node = outputs.get(node_id) if node_id is not None else None
        return list((node or {}).get("images") or [])

    async def _save(self, slot: Slot, job: Job, prepared, entry: dict, problem: str) -> Outcome:
        """Write every output the server made (the result even when the comparison is missing)."""
        assert slot.client is not None
        result = self._images(entry, self.info.result_id)
        if not result:
            return Outcome(job, False, problem or f"the server finished but returned no image from node "
                                                  f"{self.info.result_id}")
        data = await asyncio.to_thread(finalize_output, await slot.client.view(result[0]), prepared)
        shots = self._images(entry, self.info.compare_out_id) if self.compare else []
        compare = await slot.client.view(shots[0]) if shots else None
        try:
            if compare is not None:
                write_atomic(job.compare_path(self.out_dir), compare)
            write_atomic(job.out_path(self.out_dir), data)  # the result last: it marks the job as done
            self.manifest.record(job, self.settings_id, prepared.sha256, prepared.stat, compare is not None,
                                 server=slot.url)
            self.manifest.save()
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write into {self.out_dir}: {exc.strerror or exc} ({exc.filename or job.out_rel}); "
                f"make room or choose a writable output folder with -o, then rerun: the finished images are kept"
            ) from exc
        if self.compare and compare is None:
            return Outcome(job, False, f"saved the colorized image {job.out_rel}, but the server made no comparison "
                                       f"image: {problem or 'it gave no reason'}")
        if problem:
            return Outcome(job, False, f"saved the colorized image {job.out_rel}, but: {problem}")
        return Outcome(job, True)

    # ---------------------------------------------------------------- the batch

    async def connect(self) -> str | None:
        """Bring every server in: ``None`` if at least one can work, else why none can (a usage error)."""
        joined = await asyncio.gather(*(self._join(slot) for slot in self.slots))
        if any(joined):
            for slot, ok in zip(self.slots, joined, strict=True):
                if not ok and slot.usable:
                    self.progress.note(f"{slot.url} does not answer; going on without it (it joins when it does)")
                    slot.prober = asyncio.create_task(self._probe(slot))
            return None
        problems = []
        for slot in self.slots:
            if slot.usable:
                assert slot.client is not None
                try:
                    await slot.client.system_stats(retry=False)
                    problems.append(f"{slot.url} answers, but not as a ComfyUI server")
                except (ServerUnavailableError, HTTPError) as exc:
                    detail = str(exc) if isinstance(exc, ServerUnavailableError) else (
                        f"cannot reach ComfyUI at {slot.url}: {exc}")
                    problems.append(detail)
        hint = ("Start ComfyUI, or point --server at it (e.g. --server http://192.168.1.20:8188; a server on "
                "another machine needs --listen)")
        if not problems:
            return "no server can run the workflow (see above)"
        return "; ".join(problems) + f". {hint}"

    async def run(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.state[job.out_rel] = "queued"
            tag = job_tag(job, self.out_dir, self.settings_id, self.compare)
            self.tags[job.out_rel] = tag
            self.by_tag[tag] = job
        self.queue.extend(jobs)
        self.remaining = len(jobs)
        listeners = [asyncio.create_task(slot.client.listen(lambda ev, s=slot: self.on_event(s, ev)))
                     for slot in self.slots if slot.client is not None]
        workers: set[asyncio.Task] = set()
        ticker = stopper = None
        try:
            problem = await self.connect()
            if problem:
                self.usage_error = problem
                return
            workers = {asyncio.create_task(self._worker(slot)) for slot in self.slots for _ in range(slot.limit)}
            ticker = asyncio.create_task(self._tick())
            stopper = asyncio.create_task(self.stop.wait())
            pending = set(workers)
            while pending and not self.stop.is_set():
                finished, _ = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in finished - {stopper}:
                    pending.discard(task)
                    if task.exception() is not None:
                        raise task.exception()  # a bug: let it show
            if pending:  # stopped: cancel our tasks, then what we queued on the servers
                in_flight = {slot: list(slot.inflight) for slot in self.slots if slot.inflight}
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for slot, ids in in_flight.items():
                    try:
                        await asyncio.wait_for(slot.client.cancel(ids), 10)
                        self.progress.note(f"cancelled {len(ids)} image(s) queued on {slot.url}")
                    except (ServerUnavailableError, HTTPError, asyncio.TimeoutError) as exc:
                        self.progress.note(f"could not cancel our queued images on {slot.url}: {exc}")
        finally:
            self.unfinished = [job for job in jobs if self.state[job.out_rel] != "done"]
            extra = [t for t in (stopper, ticker) if t is not None]
            extra += [slot.prober for slot in self.slots if slot.prober is not None]
            for task in (*listeners, *extra, *workers):
                task.cancel()
            await asyncio.gather(*listeners, *extra, *workers, return_exceptions=True)

    async def _tick(self) -> None:
        while True:  # keeps the rate and ETA moving while a slow image is being colorized
            await asyncio.sleep(1.0)
            self.progress.draw()
            if any(slot.up for slot in self.slots):
                self._all_down_since = None
                continue
            now = time.monotonic()
            if not any(slot.usable for slot in self.slots):
                self.fatal = "no server can run the workflow any more (see above)"
                self._drain()
            elif self._all_down_since is None:
                self._all_down_since = now
            elif now - self._all_down_since > self.retry_timeout:
                names = ", ".join(slot.url for slot in self.slots)
                self.fatal = (f"no server has answered for {now - self._all_down_since:.0f} s ({names}); start one "
                              f"again and rerun the same command to resume")
                self._drain()


def _tag_of(item: object) -> str | None:
    """Our tag in a ``/queue`` item or a ``/history`` entry's ``prompt`` (``[number, id, prompt, extra_data, ...]``)."""
    if isinstance(item, list) and len(item) > 3 and isinstance(item[3], dict):
        tag = item[3].get("ddcolor_batch")
        return tag if isinstance(tag, str) else None
    return None


def _finished(entry: dict) -> bool:
    status = entry.get("status")
    return not isinstance(status, dict) or bool(status.get("completed")) or status.get("status_str") in (
        "success", "error")


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
    """``None`` if the (reachable) server can run ``workflow``, else what is missing and what to do.

    Raises :class:`ServerUnavailableError` when the server stops answering meanwhile (that is not a problem of
    the workflow: the server is simply down for now).
    """
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


def parse_servers(args: argparse.Namespace) -> list[tuple[str, int]]:
    """``(url, in-flight limit)`` per server from ``--server`` and ``--server-list`` (raises ``ValueError``)."""
    given: list[tuple[str, str, int | None]] = []  # (where it came from, text, limit)
    for text in args.servers or []:
        url, sep, limit = text.rpartition("#") if "#" in text else (text, "", "")
        given.append(("--server", url, _limit(limit, f"--server {text!r}") if sep else None))
    if args.server_list is not None:
        try:
            lines = args.server_list.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"--server-list {args.server_list}: {exc.strerror or exc}") from None
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{args.server_list}, line {number}"
            if len(words) > 2:
                raise ValueError(f"{where}: expected 'URL' or 'URL LIMIT', got {line.strip()!r}")
            given.append((where, words[0], _limit(words[1], where) if len(words) == 2 else None))
        if not given:
            raise ValueError(f"--server-list {args.server_list} names no server; put one URL per line")
    if not given:
        given.append(("default", DEFAULT_SERVER, None))
    servers: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    for where, text, limit in given:
        try:
            url = normalise_url(text)
        except ValueError as exc:
            raise ValueError(f"{exc} ({where})" if where != "--server" else str(exc)) from None
        key = url.lower()
        if key in seen:
            raise ValueError(f"server {url} is given twice ({seen[key]} and {where}); name each server once "
                             f"(to send it more photos at once, give it a higher limit: {url}#4)")
        seen[key] = where
        servers.append((url, limit or args.max_in_flight))
    return servers


def _limit(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{where}: the in-flight limit {text!r} must be a whole number of at least 1")
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
    parser.add_argument("--input-size", type=input_size_arg, metavar="PX",
                        help="fixed model input size (multiple of 32) instead of the preset's choice")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.input=VALUE",
                        help="set any node input, NODE being a class_type or node id "
                        "(e.g. DDColorMergeLab.chroma=1.2); repeatable")
    parser.add_argument("--compare", action="store_true", help="also write <name>.compare.png (before/after)")
    parser.add_argument("--server", dest="servers", action="append", metavar="URL[#N]",
                        help=f"ComfyUI URL (default {DEFAULT_SERVER}); repeat it to share the photos between "
                        "several servers; #N after a URL sets that server's in-flight limit (e.g. "
                        "http://gpu1:8188#8)")
    parser.add_argument("--server-list", type=Path, metavar="FILE",
                        help="a text file of server URLs, one per line, each optionally followed by its in-flight "
                        "limit (\"http://gpu1:8188 8\"); # starts a comment")
    parser.add_argument("--max-in-flight", type=positive_int_arg, default=2, metavar="N",
                        help="images queued on each server at once, unless its URL says otherwise (default 2)")
    parser.add_argument("--retry-timeout", type=float, default=300.0, metavar="SEC",
                        help="how long to wait for a server when none answers before giving up (default 300)")
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
        try:
            hold.enter_context(OutputLock(out_dir))
        except OSError as exc:  # read-only disk or folder, a file in the way, no permission
            raise InputError(f"cannot write into the output folder {out_dir}: {exc.strerror or exc} "
                             f"({exc.filename or out_dir}); choose a folder you can write to with -o") from None
    manifest = Manifest(out_dir)
    todo, skipped = [], []
    for job in jobs:
        done, _digest = manifest.check_done(job, settings_id, args.compare)
        (skipped if done else todo).append(job)
    return Plan(out_dir, todo, skipped, found.ignored, patched, info, settings_id, manifest)


def summary(plan: Plan, runner: Runner | None, seconds: float) -> str:
    outcomes = runner.outcomes if runner else []
    unfinished = runner.unfinished if runner else []
    fatal = runner.fatal if runner else None
    stop_reason = runner.stop_reason if runner else ""
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
        lines.append(f"Colorized {len(done)} image(s) into {plan.out_dir} in {fmt_duration(seconds)}{rate}; "
                     f"skipped {len(plan.skipped)} already done; {len(failed)} failed.")
    if runner is not None and len(runner.slots) > 1 and seconds > 0:
        for slot in runner.slots:
            note = "" if slot.usable else " (not used: it cannot run the workflow)"
            lines.append(f"  {slot.url}: {slot.done} photo(s), {slot.done / seconds:.2f} photos/s, "
                         f"{slot.failed} failed{note}")
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


async def _run(args: argparse.Namespace, plan: Plan, progress: Progress) -> Runner:
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        slots = []
        for url, limit in args.server_urls:
            client = await stack.enter_async_context(ComfyClient(url, retry_timeout=DOWN_AFTER))
            slots.append(Slot(url, limit, client))
        runner = Runner(slots, plan.out_dir, plan.workflow, plan.info, plan.settings_id, plan.manifest, progress,
                        retry_timeout=args.retry_timeout)
        for slot in slots:
            slot.client.on_retry = lambda reason, waited, s=slot: runner.on_retry(s, reason, waited)

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
        return runner


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the batch started (scanning, hashing, connecting)
        sys.stderr.write("\ninterrupted before anything was sent; rerun the same command to start again\n")
        return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    with contextlib.ExitStack() as stack:
        try:
            args.server_urls = parse_servers(args)
            # a dry run only reads; a real run holds the output folder's lock until it ends, however it ends
            plan = make_plan(args, hold=None if args.dry_run else stack)
        except (InputError, WorkflowError, ValueError, OSError) as exc:
            parser.exit(EXIT_USAGE, f"error: {exc}\n")
        for raw in args.inputs:
            folder = Path(raw).expanduser().resolve()
            if folder.is_dir() and plan.out_dir != folder and plan.out_dir.is_relative_to(folder):
                sys.stderr.write(f"note: the output folder {plan.out_dir} is inside the input folder {folder}; "
                                 f"it is not scanned for photos\n")
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
        sys.stdout.write(summary(plan, None, 0.0) + "\n")
        return EXIT_OK
    progress = Progress(len(plan.todo), sys.stderr, enabled=not args.no_progress)
    if plan.skipped:
        progress.note(f"{len(plan.skipped)} image(s) already done in {plan.out_dir}, skipping them")
    t0 = time.monotonic()
    runner = asyncio.run(_run(args, plan, progress))
    progress.close()
    if runner.usage_error and not runner.outcomes:
        sys.stderr.write(f"error: {runner.usage_error}\n")
        return EXIT_USAGE
    sys.stdout.write(summary(plan, runner, time.monotonic() - t0) + "\n")
    if runner.usage_error:
        sys.stderr.write(f"error: {runner.usage_error}\n")
        return EXIT_USAGE
    if runner.stop_reason:
        return 128 + int(runner.stop_signal)
    if runner.fatal or any(not o.ok for o in runner.outcomes):
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
