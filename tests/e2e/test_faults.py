"""What a user sees when something goes wrong, on a real ComfyUI server, and that the server keeps working.

* a model name that is not in ``models/ddcolor`` is refused with a message naming it;
* an official model that is missing while the network is blocked fails with a message naming it and a mirror;
* a corrupt or truncated weights file fails with a message naming the file;
* Cancel (``POST /interrupt``) stops a batch of 6 between images;
* 30 prompts back to back all succeed and the server's memory does not grow.

After every fault, the next prompt succeeds.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import cv2
import numpy as np
import pytest

from tests.e2e.server import ComfyServer

pytestmark = pytest.mark.e2e


def small_photo(path, width: int = 96, height: int = 64, seed: int = 0) -> None:
    """A small black-and-white test picture (smooth shapes plus some texture), saved as PNG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = 128 + 80 * np.sin(xx / (6 + seed % 5)) * np.cos(yy / 9) + rng.normal(0, 8, (height, width))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), np.repeat(grey[:, :, None], 3, axis=2))


def colorize_prompt(
    image: str,
    model_name: str,
    *,
    input_size: int = 64,
    batch: int = 1,
    batch_size: int = 4,
    prefix: str = "DDColor/e2e_faults",
) -> dict:
    """LoadImage -> (RepeatImageBatch) -> Load DDColor Model -> Colorize -> Merge -> SaveImage, in API format."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "DDColorModelLoader",
              "inputs": {"model_name": model_name, "precision": "auto", "device": "auto"}},
        "4": {"class_type": "DDColorColorize",
              "inputs": {"model": ["2", 0], "image": ["1", 0], "input_size": input_size, "keep_aspect": False,
                         "batch_size": batch_size, "offload_after_run": False}},
        "5": {"class_type": "DDColorMergeLab",
              "inputs": {"image": ["1", 0], "ab": ["4", 0], "upsample": "bilinear", "chroma": 1.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }  # fmt: skip
    if batch > 1:
        prompt["3"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": batch}}
        prompt["4"]["inputs"]["image"] = ["3", 0]
        prompt["5"]["inputs"]["image"] = ["3", 0]
    return prompt


@pytest.fixture(scope="module")
def photo(comfy_server, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("faults") / "faults_photo.png"
    small_photo(path)
    return comfy_server.upload(path, name=f"e2e_faults_{uuid.uuid4().hex[:8]}.png")


def assert_next_prompt_succeeds(server: ComfyServer, photo: str, seed_name: str) -> None:
    """A fresh, valid prompt (new output prefix, so it is not cached) runs to the end and saves a picture."""
    prompt = colorize_prompt(photo, server.model_name, prefix=f"DDColor/after_{seed_name}_{uuid.uuid4().hex[:6]}")
    prompt["5"]["inputs"]["chroma"] = 0.95 + 0.01 * (uuid.uuid4().int % 5)  # not served from ComfyUI's cache
    msgs, entry = server.run(prompt, timeout=180)
    types = [m["type"] for m in msgs]
    assert "execution_success" in types, f"the prompt after the fault failed: {types}\n{server.log_tail()}"
    assert len(entry["outputs"]["6"]["images"]) == 1


def execution_error(msgs: list[dict]) -> dict:
    errors = [m["data"] for m in msgs if m["type"] == "execution_error"]
    assert errors, f"expected an execution_error, got {[m['type'] for m in msgs]}"
    return errors[0]


# ---------------------------------------------------------------------------------------------- model files
def test_unknown_model_name_is_refused_naming_it(comfy_server, photo):
    missing = "my_grandpa_model.safetensors"
    resp = comfy_server.post_prompt(colorize_prompt(photo, missing))
    if resp.status_code == 200 and not resp.json().get("node_errors"):
        # accepted at queue time: it must then fail while running, naming the file
        err = execution_error(comfy_server.wait(resp.json()["prompt_id"], timeout=120))
        assert missing in err["exception_message"], err["exception_message"]
        assert "models" in err["exception_message"] and "ddcolor" in err["exception_message"]
    else:
        assert resp.status_code == 400, resp.text
        body = resp.json()
        node_errors = body["node_errors"]
        assert "2" in node_errors, body  # the loader is the node in red
        text = json.dumps(node_errors["2"])
        assert missing in text, text
        assert "ddcolor" in text, text  # says where the weights belong
    assert_next_prompt_succeeds(comfy_server, photo, "unknown_model")


def test_missing_official_model_offline_names_file_and_mirror(comfy_server, photo):
    # the harness points HF_ENDPOINT at a closed loopback port: the download must fail fast and clearly
    name = "ddcolor_paper_tiny.pth"
    assert not (comfy_server.models_dir / name).exists()
    prompt_id = comfy_server.queue(colorize_prompt(photo, name))
    err = execution_error(comfy_server.wait(prompt_id, timeout=180))
    message = err["exception_message"]
    assert name in message, message
    assert "HF_ENDPOINT" in message or "hf-mirror" in message, message
    assert err["node_type"] == "DDColorModelLoader"
    # nothing half-downloaded is left where ComfyUI lists models
    assert not (comfy_server.models_dir / name).exists()
    options = comfy_server.object_info("DDColorModelLoader")["input"]["required"]["model_name"]
    listed = options[0] if isinstance(options[0], list) else options[1]["options"]
    assert not [n for n in listed if n.startswith(".") or "/." in n or n.endswith((".part", ".tmp", ".incomplete"))]
    assert_next_prompt_succeeds(comfy_server, photo, "offline")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_model_file_names_the_file(comfy_server, photo, kind):
    name = f"e2e_{kind}_{uuid.uuid4().hex[:6]}.safetensors"
    path = comfy_server.models_dir / name
    good = comfy_server.models_dir / comfy_server.model_name
    if kind == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    else:  # an interrupted download: the first 5 MB of a valid file
        with good.open("rb") as fh:
            path.write_bytes(fh.read(5 * 1024 * 1024))
    try:
        prompt_id = comfy_server.queue(colorize_prompt(photo, name))
        err = execution_error(comfy_server.wait(prompt_id, timeout=180))
        assert name in err["exception_message"], err["exception_message"]
        assert err["node_type"] == "DDColorModelLoader"
        assert err["exception_type"].endswith("CheckpointError"), err["exception_type"]
    finally:
        path.unlink(missing_ok=True)
    assert_next_prompt_succeeds(comfy_server, photo, kind)


# ---------------------------------------------------------------------------------------------- cancel
def test_interrupt_stops_a_batch_of_six(comfy_server, photo, tmp_path):
    # big enough that one image takes a noticeable time on a CPU, so Cancel lands mid-batch
    path = tmp_path / "big.png"
    small_photo(path, width=512, height=384, seed=3)
    big = comfy_server.upload(path, name=f"e2e_interrupt_{uuid.uuid4().hex[:8]}.png")
    prompt = colorize_prompt(
        big, comfy_server.model_name, input_size=512, batch=6, batch_size=1, prefix="DDColor/e2e_interrupt"
    )
    prompt_id = comfy_server.queue(prompt)
    first = comfy_server.wait_for(
        prompt_id, lambda m: m["type"] == "progress" and str(m["data"].get("node")) == "4", timeout=180
    )
    assert first["data"]["max"] == 6, first
    comfy_server.interrupt()
    msgs = comfy_server.wait(prompt_id, timeout=180)
    types = [m["type"] for m in msgs]
    assert "execution_interrupted" in types, types
    assert "execution_success" not in types, types
    steps = [m["data"]["value"] for m in msgs if m["type"] == "progress" and str(m["data"].get("node")) == "4"]
    assert max(steps) < 6, f"the batch ran to the end before Cancel took effect: {steps}"
    entry = comfy_server.history(prompt_id)
    assert "6" not in entry.get("outputs", {}), "a cancelled batch must not save pictures"
    assert_next_prompt_succeeds(comfy_server, photo, "interrupt")


# ---------------------------------------------------------------------------------------------- many prompts
def test_thirty_prompts_back_to_back_all_succeed_without_memory_growth(comfy_server, tmp_path):
    names = []
    for i in range(30):
        path = tmp_path / f"p{i}.png"
        small_photo(path, width=80 + 2 * i, height=56, seed=100 + i)
        names.append(comfy_server.upload(path, name=f"e2e_soak_{uuid.uuid4().hex[:6]}_{i}.png"))

    first_id = comfy_server.queue(colorize_prompt(names[0], comfy_server.model_name, prefix="DDColor/e2e_soak"))
    assert "execution_success" in [m["type"] for m in comfy_server.wait(first_id, timeout=180)]
    rss_first = comfy_server.rss_bytes()

    ids = [
        comfy_server.queue(colorize_prompt(n, comfy_server.model_name, prefix="DDColor/e2e_soak")) for n in names[1:]
    ]
    for i, prompt_id in enumerate(ids, start=1):
        msgs = comfy_server.wait(prompt_id, timeout=180)
        types = [m["type"] for m in msgs]
        assert "execution_success" in types, f"prompt {i} of 30: {types}"
        (info,) = comfy_server.history(prompt_id)["outputs"]["6"]["images"]
        assert comfy_server.view_image(info).shape == (56, 80 + 2 * i, 3)
    rss_last = comfy_server.rss_bytes()
    assert rss_last <= rss_first * 1.10, (
        f"server memory grew from {rss_first / 2**20:.0f} MiB after the first prompt "
        f"to {rss_last / 2**20:.0f} MiB after 30"
    )


# ---------------------------------------------------------------------------------------------- bad widgets
def preset_with_compare(photo: str, model_name: str) -> dict:
    """Every DDColor node in one prompt (Resize by Preset, Colorize, Merge, Compare), saving only the comparison."""
    prompt = colorize_prompt(photo, model_name)
    prompt["3"] = {"class_type": "DDColorResizeByPreset",
                   "inputs": {"image": ["1", 0], "preset": "portrait", "custom_size": 512, "keep_aspect": False}}
    prompt["4"]["inputs"]["input_size"] = ["3", 1]
    prompt["7"] = {"class_type": "DDColorCompare",
                   "inputs": {"before": ["1", 0], "after": ["5", 0], "mode": "split", "split_position": 0.5}}
    prompt["6"]["inputs"]["images"] = ["7", 0]
    return prompt  # fmt: skip


BAD_WIDGETS = [  # node id, input, value, words of the reason
    ("2", "precision", "bogus", ["precision", "bogus"]),
    ("2", "device", "bogus", ["device", "bogus"]),
    ("2", "model_name", 123, ["model_name", "123"]),
    ("3", "preset", "bogus", ["preset", "bogus"]),
    ("4", "batch_size", 0, ["batch_size"]),
    ("5", "upsample", "bogus", ["upsample", "bogus"]),
    ("5", "chroma", float("nan"), ["chroma", "nan"]),
    ("7", "mode", "bogus", ["mode", "bogus"]),
    ("7", "split_position", 5, ["split_position", "5"]),
    ("7", "split_position", "NaN", ["split_position", "nan"]),
]


@pytest.mark.parametrize(("node", "name", "value", "words"), BAD_WIDGETS,
                         ids=[f"{n}.{i}={v!r}" for n, i, v, _ in BAD_WIDGETS])
def test_bad_widget_is_refused_by_post_prompt_with_the_reason(comfy_server, photo, node, name, value, words):
    prompt = preset_with_compare(photo, comfy_server.model_name)
    prompt[node]["inputs"][name] = value
    body = json.dumps({"prompt": prompt, "client_id": comfy_server.client_id})  # NaN as the token NaN, as
    resp = comfy_server.http.post(f"{comfy_server.url}/prompt", data=body, timeout=60,  # Python clients send it
                                  headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, f"{name}={value!r} was queued (HTTP {resp.status_code}): {resp.text[:500]}"
    node_errors = resp.json()["node_errors"]
    assert set(node_errors) == {node}, node_errors
    text = json.dumps(node_errors[node]["errors"])
    for word in words:
        assert word in text, text


# ---------------------------------------------------------------------------------------------- preview output
def test_preview_connected_after_a_run_without_it_is_a_real_picture(comfy_server, photo):
    prefix = f"DDColor/e2e_preview_{uuid.uuid4().hex[:6]}"
    prompt = colorize_prompt(photo, comfy_server.model_name, prefix=prefix)
    prompt["5"]["inputs"]["chroma"] = 1.3  # not in ComfyUI's cache from another test
    msgs, _ = comfy_server.run(prompt, timeout=180)
    assert "execution_success" in [m["type"] for m in msgs]
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": prefix + "_preview"}}
    msgs, entry = comfy_server.run(prompt, timeout=180)  # Colorize's inputs are unchanged
    assert "execution_success" in [m["type"] for m in msgs], [m["type"] for m in msgs]
    (info,) = entry["outputs"]["8"]["images"]
    assert comfy_server.view_image(info).shape == (64, 96, 3)


# ---------------------------------------------------------------------------------------------- quick cancel
def test_cancel_takes_effect_within_5_s_at_1024_batch_16(comfy_server, photo):
    """The hostile tester's case: 16 images at input_size 1024 with batch_size 16 took 115 s to cancel."""
    prompt = colorize_prompt(photo, comfy_server.model_name, input_size=1024, batch=16, batch_size=16,
                             prefix="DDColor/e2e_quick_cancel")
    prompt_id = comfy_server.queue(prompt)
    comfy_server.wait_for(
        prompt_id, lambda m: m["type"] == "executing" and str(m["data"].get("node")) == "4", timeout=180
    )
    time.sleep(3.0)  # inside the first forward
    pressed = time.monotonic()
    comfy_server.interrupt()
    comfy_server.wait_for(prompt_id, lambda m: m["type"] in ("execution_interrupted", "execution_success"),
                          timeout=300)
    waited = time.monotonic() - pressed
    types = [m["type"] for m in comfy_server.messages(prompt_id)]
    assert "execution_interrupted" in types, types
    assert waited <= 5.0, f"Cancel took {waited:.1f} s to take effect"
    assert_next_prompt_succeeds(comfy_server, photo, "quick_cancel")
