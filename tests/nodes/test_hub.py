"""Official checkpoint download (``ddcolor/hub.py``) with the network mocked or really unreachable."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch

NAME = "ddcolor_paper.pth"


def _small_checkpoint(path: Path) -> bytes:
    torch.save({"params": {"w": torch.arange(4096, dtype=torch.float32)}}, path)
    return path.read_bytes()


@pytest.fixture()
def hub(dd, monkeypatch):
    """``ddcolor.hub`` with the size floor of ddcolor_paper.pth lowered so a small test file counts as whole."""
    module = dd.hub
    monkeypatch.setitem(module.OFFICIAL_MODELS, NAME, dataclasses.replace(module.OFFICIAL_MODELS[NAME],
                                                                          approx_size_mb=0))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return module


def _fake_download(calls, write):
    def fake(repo_id, filename, *, local_dir, tqdm_class=None, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        path = Path(local_dir) / filename
        data = write(path)
        if tqdm_class is not None:
            with tqdm_class(total=len(data), disable=True) as bar:
                bar.update(len(data))
        return str(path)

    return fake


def test_official_models_table(dd):
    table = dd.OFFICIAL_MODELS
    assert set(table) == {"ddcolor_modelscope.pth", "ddcolor_paper.pth", "ddcolor_artistic.pth",
                          "ddcolor_paper_tiny.pth"}
    assert {m.repo_id for m in table.values()} == {"piddnad/DDColor-models"}
    assert table["ddcolor_paper_tiny.pth"].variant == "tiny" and table[NAME].variant == "large"
    assert dd.hub.official_url(NAME) == "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_paper.pth"


def test_download_success(hub, tmp_path, monkeypatch):
    calls, seen = [], []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(calls, _small_checkpoint))
    path = hub.download_official(NAME, tmp_path / "ddcolor", progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "ddcolor" / NAME and path.is_file()
    assert torch.load(path, weights_only=True)["params"]["w"][-1] == 4095
    assert calls[0]["repo_id"] == "piddnad/DDColor-models" and calls[0]["filename"] == NAME
    assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
    assert not (tmp_path / "ddcolor" / hub.STAGING_DIRNAME).exists()
    # already there: no second download
    assert hub.download_official(NAME, tmp_path / "ddcolor") == path
    assert len(calls) == 1


def test_mirror_endpoint_is_passed_on(hub, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(calls, _small_checkpoint))
    hub.download_official(NAME, tmp_path)
    assert calls[0]["endpoint"] == "https://hf-mirror.com"


def test_truncated_download_is_deleted(hub, tmp_path, monkeypatch):
    def write_half(path: Path) -> bytes:
        data = _small_checkpoint(path)
        path.write_bytes(data[: len(data) // 2])
        return data

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download([], write_half))
    with pytest.raises(hub.CheckpointError, match="incomplete or corrupt and was deleted") as info:
        hub.download_official(NAME, tmp_path)
    assert "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_paper.pth" in str(info.value)
    assert not list(tmp_path.rglob("*.pth"))  # nothing left that could be mistaken for a model


def test_too_small_download_is_deleted(dd, tmp_path, monkeypatch):
    # real size floor of the large model (~870 MB): a 20 kB file is a cut-short download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download([], _small_checkpoint))
    with pytest.raises(dd.hub.CheckpointError, match="cut short"):
        dd.hub.download_official(NAME, tmp_path)
    assert not list(tmp_path.rglob("*.pth"))


def _assert_manual_instructions(message: str, dest: Path, endpoint: str = "https://huggingface.co") -> None:
    assert f"{endpoint}/piddnad/DDColor-models/resolve/main/{NAME}" in message  # from where
    assert NAME in message  # which file
    assert str(dest) in message  # where to put it
    assert "HF_ENDPOINT=https://hf-mirror.com" in message  # the mirror tip


def test_offline_mode_gives_manual_instructions(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.CheckpointError) as info:
        hub.download_official(NAME, tmp_path)  # the real hf_hub_download
    message = str(info.value)
    _assert_manual_instructions(message, tmp_path)
    assert "HF_HUB_OFFLINE is set" in message
    assert not list(tmp_path.rglob("*.pth"))


def test_unreachable_server_gives_manual_instructions(hub, tmp_path, monkeypatch):
    with socket.socket() as sock:  # a local port nobody listens on: connection refused, no internet needed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(hub.CheckpointError, match="could not be downloaded") as info:
        hub.download_official(NAME, tmp_path)  # the real hf_hub_download
    _assert_manual_instructions(str(info.value), tmp_path, endpoint)
    assert not list(tmp_path.rglob("*.pth"))


def test_unknown_name(dd, tmp_path):
    with pytest.raises(dd.hub.CheckpointError, match="not an official DDColor checkpoint"):
        dd.hub.download_official("ddcolor_v9.pth", tmp_path)


def test_truncated_safetensors_is_detected(dd, tmp_path, tiny_weights):
    path = tmp_path / "cut.safetensors"
    with tiny_weights.open("rb") as fh:
        path.write_bytes(fh.read(1 << 20))
    with pytest.raises(dd.hub.CheckpointError, match="truncated"):
        dd.hub.verify_checkpoint_file(path)
    dd.hub.verify_checkpoint_file(tiny_weights)  # the whole file passes
