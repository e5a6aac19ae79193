"""The pack's one client for ComfyUI's HTTP + websocket API (aiohttp, which ComfyUI itself installs).

:class:`ComfyClient` is asynchronous (the batch tool); :class:`SyncComfyClient` runs the same client for code
that blocks (``scripts/run_example.py``, the e2e tests' server, benchmarks). The README's standard-library
snippet is for users who want no dependency at all; nothing in the pack uses another client.

Endpoints used: ``POST /upload/image``, ``POST /prompt``, ``GET /history[/<id>]``, ``GET /queue``, ``GET /view``,
``POST /queue {"delete": [...]}``, ``POST /interrupt {"prompt_id": ...}``, ``GET /object_info/<class>`` and the
``/ws?clientId=`` event stream. Everything goes over HTTP, so the server can be another machine.

Connection problems (refused, reset, timeouts, 502/503/504) are retried with exponential backoff until the
server has been unreachable for ``retry_timeout`` seconds in a row; then :class:`ServerUnavailableError` is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

log = logging.getLogger("ComfyUI-DDColor.batch")

_TRANSIENT_STATUS = (502, 503, 504)
_TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class ServerUnavailableError(Exception):
    """The server could not be reached for longer than the retry timeout (ends the batch, not one image).

    Deliberately not an ``OSError``: per-image error handling must not swallow it. ``reason`` is the last
    connection error in a few words.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class HTTPError(RuntimeError):
    """The server answered with an error status (4xx, or a 5xx that is not a gateway error)."""

    def __init__(self, method: str, path: str, status: int, body: bytes):
        self.status = status
        self.body = body
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None
        text = body.decode("utf-8", "replace").strip()
        super().__init__(f"{method} {path} -> HTTP {status}: {text[:500] or '(empty body)'}")


class _TransientError(Exception):
    pass


def normalise_url(url: str, label: str = "--server") -> str:
    """``127.0.0.1:8188`` -> ``http://127.0.0.1:8188`` (no trailing slash); raises ``ValueError`` if unusable.

    The message is one line that names the URL and shows a good one, for the command line to print as is.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    example = "use e.g. http://127.0.0.1:8188"
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"{label} {url!r} is not a valid URL ({exc}); {example}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{label} {url!r} is not an http(s) URL; {example}")
    if not parts.hostname:
        raise ValueError(f"{label} {url!r} has no host name; {example}")
    if port == 0:
        raise ValueError(f"{label} {url!r}: port 0 is not a port a server listens on; {example}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def format_prompt_error(payload: object) -> str:
    """A readable message from a ``POST /prompt`` 400 answer (``{"error": ..., "node_errors": ...}``)."""
    if not isinstance(payload, dict):
        return str(payload)
    parts = []
    error = payload.get("error")
    if isinstance(error, dict):
        parts.append(error.get("message") or error.get("type") or "invalid prompt")
        if error.get("details"):
            parts.append(str(error["details"]))
    elif error:
        parts.append(str(error))
    node_errors = payload.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            for err in info.get("errors") or []:
                if isinstance(err, dict):
                    # "details" names the input ("chroma"), "message" says what is wrong with it
                    # ("Value 5.0 bigger than max of 2.0"): keep both
                    bits = [str(err[k]).strip() for k in ("details", "message") if err.get(k)]
                    detail = ": ".join(dict.fromkeys(b for b in bits if b)) or str(err.get("type") or "invalid")
                    parts.append(f"node {node_id} ({info.get('class_type', '?')}): {detail}")
    return "; ".join(p for p in parts if p) or json.dumps(payload)[:500]


def history_error(entry: dict) -> str | None:
    """``None`` if a ``/history`` entry finished successfully, else why it did not."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" or (status.get("completed") and status.get("status_str") != "error"):
        return None
    for kind, data in status.get("messages") or []:
        if kind == "execution_error" and isinstance(data, dict):
            node = f"{data.get('node_type', '?')} (node {data.get('node_id', '?')})"
            return f"the server failed in {node}: {data.get('exception_type', 'error')}: " + str(
                data.get("exception_message", "")
            ).strip()
        if kind == "execution_interrupted":
            return "interrupted on the server (Cancel was pressed in ComfyUI, or /interrupt was called)"
    return f"the server reports status {status.get('status_str') or 'unknown'!r} without an error message"


class ComfyClient:
    """One connection to one ComfyUI server; use as ``async with ComfyClient(url) as client:``."""

    def __init__(
        self,
        url: str,
        *,
        retry_timeout: float = 300.0,
        on_retry: Callable[[str, float], None] | None = None,
        request_timeout: float = 300.0,
        client_id: str | None = None,
    ):
        self.url = normalise_url(url, label="server URL")
        self.client_id = client_id or uuid.uuid4().hex
        self.retry_timeout = retry_timeout
        self.on_retry = on_retry
        self.request_timeout = request_timeout
        self.session: aiohttp.ClientSession | None = None
        self.ws_connected = False
        self._down_since: float | None = None

    async def __aenter__(self) -> ComfyClient:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.request_timeout)
        self.session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------------------------------ requests

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: dict | None = None,
        raw: bool = False,
        retry: bool = True,
    ) -> object:
        """One HTTP call; JSON (or bytes with ``raw``) back. Transient failures are retried (see module doc)."""
        assert self.session is not None, "use 'async with ComfyClient(...)'"
        delay = 0.5
        while True:
            try:
                kwargs: dict = {"params": params}
                if form is not None:
                    kwargs["data"] = form()  # a FormData can be sent only once: build it per attempt
                elif json_body is not None:
                    kwargs["json"] = json_body
                async with self.session.request(method, self.url + path, **kwargs) as resp:
                    if resp.status in _TRANSIENT_STATUS:
                        raise _TransientError(f"HTTP {resp.status}")
                    body = await resp.read()
                    if resp.status >= 400:
                        raise HTTPError(method, path, resp.status, body)
                self._down_since = None
                if raw:
                    return body
                return json.loads(body) if body.strip() else None
            except (_TransientError, *_TRANSIENT_ERRORS) as exc:
                reason = str(exc) or type(exc).__name__
                if not retry:
                    raise ServerUnavailableError(f"cannot reach ComfyUI at {self.url}: {reason}", reason) from exc
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                waited = now - self._down_since
                if waited > self.retry_timeout:
                    raise ServerUnavailableError(
                        f"ComfyUI at {self.url} has been unreachable for {waited:.0f} s ({reason}); "
                        f"start it again and rerun the same command to resume", reason
                    ) from exc
                if self.on_retry is not None:
                    self.on_retry(reason, waited)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def reply(self, method: str, path: str, *, json_body: object = None, params: dict | None = None,
                    retry: bool = True) -> tuple[int, bytes]:
        """``(status, body)`` of one call, whatever the status (for callers that look at a refusal themselves)."""
        try:
            body = await self.request(method, path, json_body=json_body, params=params, raw=True, retry=retry)
        except HTTPError as exc:
            return exc.status, exc.body
        return 200, body  # type: ignore[return-value]

    async def system_stats(self, retry: bool = False) -> dict:
        return await self.request("GET", "/system_stats", retry=retry)  # type: ignore[return-value]

    async def object_info(self, class_type: str) -> dict | None:
        """The node definition of ``class_type`` on the server, or ``None`` if the server does not have it."""
        try:
            data = await self.request("GET", f"/object_info/{class_type}")
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise
        return data.get(class_type) if isinstance(data, dict) else None

    async def object_info_all(self) -> dict:
        """Every node definition on the server (``GET /object_info``)."""
        data = await self.request("GET", "/object_info")
        return data if isinstance(data, dict) else {}

    async def upload_image(self, data: bytes, name: str, subfolder: str = "", overwrite: bool = False) -> str:
        """Upload into the server's input folder; returns the name LoadImage takes (``subfolder/name``)."""

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("image", data, filename=name, content_type="application/octet-stream")
            fd.add_field("subfolder", subfolder)
            fd.add_field("type", "input")
            if overwrite:
                fd.add_field("overwrite", "true")
            return fd

        answer = await self.request("POST", "/upload/image", form=form)
        if not isinstance(answer, dict) or "name" not in answer:
            raise RuntimeError(f"unexpected answer from /upload/image: {answer!r}")
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    async def submit(self, workflow: dict, prompt_id: str, extra_data: dict | None = None) -> dict:
        """``POST /prompt``; returns the answer (``prompt_id``, ``number``, ``node_errors``).

        A 200 answer can still carry ``node_errors``: the server runs the outputs that passed validation and
        drops the others. ``extra_data`` is kept by the server with the prompt (``/queue``, ``/history``).
        """
        body: dict = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        answer = await self.request("POST", "/prompt", json_body=body)
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise RuntimeError(f"unexpected answer from /prompt: {answer!r}")
        return answer

    async def queue_prompt(self, workflow: dict, prompt_id: str, extra_data: dict | None = None) -> str:
        """Queue ``workflow``; returns the prompt id (ours, unless the server is too old to accept it)."""
        return str((await self.submit(workflow, prompt_id, extra_data))["prompt_id"])

    async def history(self, prompt_id: str) -> dict | None:
        answer = await self.request("GET", f"/history/{prompt_id}")
        return answer.get(prompt_id) if isinstance(answer, dict) else None

    async def history_all(self) -> dict[str, dict]:
        """Every ``/history`` entry the server keeps (it keeps the last 10000 prompts), by prompt id."""
        answer = await self.request("GET", "/history")
        return answer if isinstance(answer, dict) else {}

    async def queue_items(self) -> list[list]:
        """The running and pending prompts: ``[number, prompt_id, prompt, extra_data, outputs, ...]`` each."""
        answer = await self.request("GET", "/queue")
        items: list[list] = []
        if isinstance(answer, dict):
            for key in ("queue_running", "queue_pending"):
                items.extend(i for i in answer.get(key) or [] if isinstance(i, list) and len(i) > 1)
        return items

    async def queued_ids(self) -> set[str]:
        return {str(item[1]) for item in await self.queue_items()}

    async def view(self, image: dict) -> bytes:
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                  "type": image.get("type", "output")}
        return await self.request("GET", "/view", params=params, raw=True)  # type: ignore[return-value]

    async def cancel(self, prompt_ids: list[str]) -> None:
        """Remove our pending prompts from the queue and interrupt the running one (best effort, no retries)."""
        if not prompt_ids:
            return
        await self.request("POST", "/queue", json_body={"delete": prompt_ids}, retry=False)
        for pid in prompt_ids:
            await self.request("POST", "/interrupt", json_body={"prompt_id": pid}, retry=False)

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is ``prompt_id``, when given; ComfyUI before 0.3.44 ignores it)."""
        await self.request("POST", "/interrupt", json_body={"prompt_id": prompt_id} if prompt_id else {})

    # ------------------------------------------------------------------------------------------ events

    def ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={self.client_id}", ""))

    async def listen(self, on_event: Callable[[dict], None]) -> None:
        """Forward every JSON event of ``/ws`` to ``on_event``, reconnecting forever (cancel the task to stop).

        ``{"type": "_connected"}`` / ``{"type": "_disconnected"}`` are sent on (re)connection and loss, so the
        caller can re-check what was in flight (events sent while disconnected are lost).
        """
        assert self.session is not None
        delay = 0.5
        while True:
            try:
                async with self.session.ws_connect(self.ws_url(), heartbeat=20, max_msg_size=64 << 20) as ws:
                    self.ws_connected = True
                    delay = 0.5
                    on_event({"type": "_connected"})
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            try:
                                event = json.loads(msg.data)
                            except ValueError:
                                continue
                            if isinstance(event, dict):
                                on_event(event)
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.debug("websocket: %s", exc)
            if self.ws_connected:
                self.ws_connected = False
                on_event({"type": "_disconnected"})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class SyncComfyClient:
    """The same client for code that does not use asyncio (scripts, tests): every method blocks.

    It runs a :class:`ComfyClient` on a private event loop in a daemon thread, so there is one implementation of
    the API. With ``on_event`` it also follows ``/ws`` and calls ``on_event(event)`` (from that thread) for every
    message, as :meth:`ComfyClient.listen` does; ``connect`` waits until the websocket is connected.
    """

    def __init__(self, url: str, *, retry_timeout: float = 0.0, request_timeout: float = 300.0,
                 client_id: str | None = None, on_event: Callable[[dict], None] | None = None,
                 connect_timeout: float = 30.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfy-client", daemon=True)
        self._thread.start()
        self._client = ComfyClient(url, retry_timeout=retry_timeout, request_timeout=request_timeout,
                                   client_id=client_id)
        self._listener: asyncio.Future | None = None
        self.url = self._client.url
        self.client_id = self._client.client_id
        self._call(self._client.__aenter__())
        if on_event is not None:
            connected = threading.Event()

            def forward(event: dict) -> None:
                if event.get("type") == "_connected":
                    connected.set()
                on_event(event)

            self._listener = asyncio.run_coroutine_threadsafe(self._client.listen(forward), self._loop)
            if not connected.wait(connect_timeout):
                self.close()
                raise ServerUnavailableError(f"no websocket connection to {self.url}/ws within {connect_timeout:.0f} s")

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str):
        """Every coroutine method of :class:`ComfyClient` (``history``, ``submit``, ``view`` ...), blocking."""
        attr = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(attr) or name in ("listen", "__aenter__", "__aexit__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(attr(*args, **kwargs))

    @property
    def ws_connected(self) -> bool:
        return self._client.ws_connected

    def close(self) -> None:
        if not self._loop.is_running():
            return
        if self._listener is not None:
            self._loop.call_soon_threadsafe(self._listener.cancel)
        with contextlib.suppress(RuntimeError):
            self._call(self._client.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncComfyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
