"""Load DDColor Model: model folder registration, listing, loading, refusals and first-use download."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import comfy.model_patcher
import folder_paths
import pytest
import torch


def _link(target: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def test_extra_model_paths_entries_are_kept(model_dir, nodes_pkg, tmp_path):
    from utils.extra_config import load_extra_path_config  # ComfyUI's own extra_model_paths.yaml reader

    loader = nodes_pkg.loader
    folder_paths.folder_names_and_paths.pop("ddcolor", None)
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text(f"mine:\n    base_path: {tmp_path}\n    ddcolor: my_ddcolor\n")
    load_extra_path_config(str(yaml_file))
    loader.register_model_folder()
    loader.register_model_folder()  # idempotent
    paths, extensions = folder_paths.folder_names_and_paths["ddcolor"]
    assert paths == [str(tmp_path / "my_ddcolor"), str(model_dir)]
    assert {".pth", ".pt", ".bin", ".safetensors"} <= set(extensions)


def test_model_list(model_dir, nodes_pkg, tiny_weights):
    loader = nodes_pkg.loader
    (model_dir / "a.pth").write_bytes(b"x")
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "b.safetensors").write_bytes(b"x")
    (model_dir / "notes.txt").write_text("not a model")
    hf = model_dir / "hf_tiny"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    (model_dir / "ddcolor_paper.pth").write_bytes(b"x")
    staging = model_dir / ".ddcolor-download"
    staging.mkdir()
    (staging / "ddcolor_artistic.pth").write_bytes(b"half a download")
    names = loader.list_models()
    assert names[:4] == ["a.pth", "ddcolor_paper.pth", "hf_tiny", str(Path("sub") / "b.safetensors")]
    assert names[4:] == ["ddcolor_modelscope.pth", "ddcolor_artistic.pth", "ddcolor_paper_tiny.pth"]
    combo = nodes_pkg.DDColorModelLoader.INPUT_TYPES()["required"]["model_name"]
    assert (combo[1]["options"] if combo[0] == "COMBO" else combo[0]) == names  # what the UI shows


def test_loads_a_safetensors_file_into_a_model_patcher(model_dir, nodes_pkg, tiny_weights):
    _link(tiny_weights, model_dir / "tiny.safetensors")
    (patcher,) = nodes_pkg.DDColorModelLoader.execute("tiny.safetensors", "auto", "auto").result
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    assert patcher.model.config.variant == "tiny"
    assert patcher.load_device == torch.device("cpu")  # ComfyUI runs on the CPU here
    assert next(patcher.model.parameters()).dtype == torch.float32  # auto = fp32 on the CPU
    assert patcher.model_size() > 200e6  # ComfyUI's memory manager sees the real weight size


def test_precision_choices(model_dir, nodes_pkg, tiny_weights, caplog):
    _link(tiny_weights, model_dir / "tiny.safetensors")
    (bf16,) = nodes_pkg.DDColorModelLoader.execute("tiny.safetensors", "bf16", "cpu").result
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="ComfyUI-DDColor"):
        (fp16,) = nodes_pkg.DDColorModelLoader.execute("tiny.safetensors", "fp16", "cpu").result
    assert next(fp16.model.parameters()).dtype == torch.float32
    assert "fp16 is slow or unsupported on the CPU" in caplog.text


def test_loads_a_hugging_face_folder(model_dir, nodes_pkg, tiny_weights):
    hf = model_dir / "ddcolor_tiny_hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"encoder_name": "convnext-t"}))
    _link(tiny_weights, hf / "model.safetensors")
    assert "ddcolor_tiny_hf" in nodes_pkg.loader.list_models()
    (patcher,) = nodes_pkg.DDColorModelLoader.execute("ddcolor_tiny_hf", "fp32", "cpu").result
    assert patcher.model.config.encoder_name == "convnext-t"


@pytest.mark.parametrize("name", ["../tiny.safetensors", "sub/../../tiny.safetensors", "/etc/passwd",
                                  "C:\\models\\x.pth", "..\\x.pth"])
def test_path_tricks_are_refused(model_dir, nodes_pkg, dd, name):
    node = nodes_pkg.DDColorModelLoader
    message = node.validate_inputs(model_name=name)
    assert isinstance(message, str) and "is not allowed" in message and str(model_dir) in message
    with pytest.raises(dd.errors.CheckpointError, match="is not allowed"):
        node.execute(name, "auto", "auto")


def test_missing_file(model_dir, nodes_pkg, dd):
    node = nodes_pkg.DDColorModelLoader
    message = node.validate_inputs(model_name="nope.pth")
    assert isinstance(message, str) and "'nope.pth' was not found" in message and str(model_dir) in message
    with pytest.raises(dd.errors.CheckpointError, match="'nope.pth' was not found") as info:
        node.execute("nope.pth", "auto", "auto")
    assert str(model_dir) in str(info.value) and "press R" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("broken.safetensors", "truncate", "truncated"),
        ("junk.pth", b"this is not a checkpoint", "junk.pth"),
        ("empty.pt", b"", "empty"),
    ],
)
def test_corrupt_files_are_refused_with_a_clear_message(model_dir, nodes_pkg, dd, tiny_weights, name, content,
                                                         expect):
    if content == "truncate":
        with tiny_weights.open("rb") as fh:
            content = fh.read(3 << 20)
    (model_dir / name).write_bytes(content)
    with pytest.raises(dd.errors.CheckpointError) as info:
        nodes_pkg.DDColorModelLoader.execute(name, "auto", "auto")
    message = str(info.value)
    assert name in message and expect in message
    assert "download it again" in message


def test_official_model_is_downloaded_on_first_use(model_dir, nodes_pkg, dd, tiny_weights, monkeypatch,
                                                   progress_events):
    import huggingface_hub
    from safetensors.torch import load_file

    calls = []

    def fake_hf_hub_download(repo_id, filename, *, local_dir, tqdm_class=None, **kwargs):
        calls.append((repo_id, filename))
        path = Path(local_dir) / filename
        torch.save({"params": load_file(str(tiny_weights))}, path)  # the official .pth layout
        size = path.stat().st_size
        with tqdm_class(total=size, unit="B", disable=True) as bar:
            bar.update(size // 2)
            bar.update(size - size // 2)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    (patcher,) = nodes_pkg.DDColorModelLoader.execute("ddcolor_paper_tiny.pth", "auto", "auto").result
    assert calls == [("piddnad/DDColor-models", "ddcolor_paper_tiny.pth")]
    assert patcher.model.config.variant == "tiny"
    assert (model_dir / "ddcolor_paper_tiny.pth").is_file()
    assert not (model_dir / ".ddcolor-download").exists()
    assert progress_events and progress_events[-1][0] == progress_events[-1][1] > 200e6
    # second use: no download
    nodes_pkg.DDColorModelLoader.execute("ddcolor_paper_tiny.pth", "auto", "auto")
    assert len(calls) == 1
