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
