"""The batch colorizer's client-side logic, without a server: discovery, output mapping, resume, patching, EXIF.

Server behaviour (upload, queue, restart, Ctrl-C) is covered by ``tests/e2e/test_batch_cli.py``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import api_workflow as aw
from tools import batch_jobs as bj
from tools.batch_colorize import Progress, main
from tools.comfy_client import format_prompt_error, history_error, normalise_url

REPO_ROOT = Path(__file__).resolve().parent.parent


def _img(path: Path, size=(32, 24), mode="RGB", color=(120, 60, 30), fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode != "L" else 128).save(path, format=fmt, **save)
    return path


# --------------------------------------------------------------------------------------------- discovery


def test_discover_recursive_by_extension_skipping_hidden_and_output(tmp_path):
    src = tmp_path / "album"
    _img(src / "a.jpg")
    _img(src / "B.JPEG", fmt="JPEG")
    _img(src / "sub" / "deeper" / "c.png")
    _img(src / "d.webp")
    _img(src / "e.tif")
    _img(src / "f.bmp")
    (src / "notes.txt").write_text("x")
    (src / "._a.jpg").write_bytes(b"macOS resource fork")
    _img(src / ".hidden" / "g.png")
    _img(src / "out" / "a.png")  # the output folder inside the input: never scanned
    found = bj.discover([src], exclude=src / "out")
    rels = [f.relative_to(src).as_posix() for f in found.files]
    assert rels == ["B.JPEG", "a.jpg", "d.webp", "e.tif", "f.bmp", "sub/deeper/c.png"]
    assert found.base == src.resolve()
    assert [p.name for p in found.ignored] == ["notes.txt"]


def test_discover_files_and_errors(tmp_path):
    a = _img(tmp_path / "x" / "a.jpg")
    b = _img(tmp_path / "y" / "b.png")
    heic = tmp_path / "y" / "c.heic"
    heic.write_bytes(b"not supported")
    found = bj.discover([a, b, heic])
    assert found.base == tmp_path.resolve()  # the common folder, so x/ and y/ are mirrored
    assert [f.name for f in found.files] == ["a.jpg", "b.png", "c.heic"]  # named files are kept, then fail
    with pytest.raises(bj.InputError, match="does not exist"):
        bj.discover([tmp_path / "missing"])
    with pytest.raises(bj.InputError):
        bj.discover([])


# --------------------------------------------------------------------------------------------- mapping


def test_output_mapping_mirrors_tree_and_resolves_clashes(tmp_path):
    base = tmp_path
    files = [base / n for n in ("a.jpg", "a.png", "sub/b.tif", "c.compare.jpg", "c.jpg", "d.JPG")]
    jobs = {j.rel: j for j in bj.plan_jobs(files, base)}
    assert jobs["sub/b.tif"].out_rel == "sub/b.png"
    assert jobs["sub/b.tif"].compare_rel == "sub/b.compare.png"
    assert jobs["d.JPG"].out_rel == "d.png"
    # a.jpg and a.png would both become a.png: both keep their extension
    assert jobs["a.jpg"].out_rel == "a.jpg.png" and jobs["a.png"].out_rel == "a.png.png"
    # c.compare.jpg -> c.compare.png would be c.jpg's comparison image
    assert jobs["c.jpg"].out_rel != jobs["c.compare.jpg"].out_rel
    targets = [t.lower() for j in jobs.values() for t in (j.out_rel, j.compare_rel)]
    assert len(targets) == len(set(targets))
    assert jobs["sub/b.tif"].out_path(tmp_path / "o") == tmp_path / "o" / "sub" / "b.png"


def test_output_folder_equal_to_input_is_refused(tmp_path):
    _img(tmp_path / "a.png")
    found = bj.discover([tmp_path])
    jobs = bj.plan_jobs(found.files, found.base)
    with pytest.raises(bj.InputError, match="overwrite"):
        bj.check_output_dir(tmp_path, jobs)
    bj.check_output_dir(tmp_path / "out", jobs)


# --------------------------------------------------------------------------------------------- resume


def _done_job(tmp_path, compare=False):
    src = _img(tmp_path / "in" / "sub" / "a.jpg")
    out = tmp_path / "out"
    job = bj.plan_jobs([src], tmp_path / "in")[0]
    bj.write_atomic(job.out_path(out), b"result png")
    if compare:
        bj.write_atomic(job.compare_path(out), b"compare png")
    manifest = bj.Manifest(out)
    manifest.record(job, "S1", bj.sha256_file(src), src.stat(), compare)
    manifest.save()
    return src, out, job


def test_resume_skips_only_unchanged_inputs_with_same_settings(tmp_path):
    src, out, job = _done_job(tmp_path)
    fresh = bj.Manifest(out)  # read back from disk
    assert fresh.check_done(job, "S1", want_compare=False)[0]
    assert not fresh.check_done(job, "S2", want_compare=False)[0], "other settings: redo"
    assert not fresh.check_done(job, "S1", want_compare=True)[0], "comparison wanted but never made: redo"

    # same bytes, new mtime (copied to another disk): still done, after checking the sha256
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    done, digest = fresh.check_done(job, "S1", want_compare=False)
    assert done and digest == bj.sha256_file(src)

    # edited photo (same size, different content): redo
    data = bytearray(src.read_bytes())
    data[-3] ^= 0xFF
    src.write_bytes(bytes(data))
    assert not fresh.check_done(job, "S1", want_compare=False)[0]


def test_resume_redoes_missing_or_changed_output(tmp_path):
    _src, out, job = _done_job(tmp_path)
    job.out_path(out).write_bytes(b"truncated")
    assert not bj.Manifest(out).check_done(job, "S1", False)[0]
    job.out_path(out).unlink()
    assert not bj.Manifest(out).check_done(job, "S1", False)[0]


def test_resume_with_compare(tmp_path):
    _src, out, job = _done_job(tmp_path, compare=True)
    assert bj.Manifest(out).check_done(job, "S1", want_compare=True)[0]
    job.compare_path(out).unlink()
    assert not bj.Manifest(out).check_done(job, "S1", want_compare=True)[0]
    assert bj.Manifest(out).check_done(job, "S1", want_compare=False)[0]


def test_unreadable_manifest_means_redo_not_crash(tmp_path, caplog):
    _src, out, job = _done_job(tmp_path)
    (out / bj.MANIFEST_NAME).write_text("{ not json")
    manifest = bj.Manifest(out)
    assert not manifest.check_done(job, "S1", False)[0]
    assert "cannot read" in caplog.text


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "d" / "x.png"
    bj.write_atomic(target, b"one")
    bj.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
    leftover = target.parent / f".x.png.123{bj.PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half")
    assert bj.remove_partials(tmp_path) == 1
    assert not leftover.exists() and target.exists()


# --------------------------------------------------------------------------------------------- images


def test_exif_orientation_is_applied_before_upload(tmp_path):
    # stored 60x40 landscape, marker in the stored top-left; EXIF orientation 6 = "rotate 90 CW to view"
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x9003] = "1950:06:01 12:00:00"  # date taken, kept on the result
    path = tmp_path / "rot.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    prep = bj.prepare_upload(path)
    assert prep.size == (40, 60)
    assert prep.ext == ".png"
    up = np.asarray(Image.open(io.BytesIO(prep.data)).convert("RGB")).astype(int)
    assert up.shape == (60, 40, 3)
    assert up[:8, -8:, 0].mean() > 200 and up[:8, :8, 0].mean() < 60  # marker now top-right
    assert Image.open(io.BytesIO(prep.data)).getexif().get(0x0112, 1) == 1

    # the result gets the EXIF back, with orientation reset (it is already upright)
    server_png = io.BytesIO()
    Image.new("RGB", prep.size, (1, 2, 3)).save(server_png, format="PNG")
    final = Image.open(io.BytesIO(bj.finalize_output(server_png.getvalue(), prep)))
    assert final.size == (40, 60)
    assert final.getexif().get(0x0112) == 1
    assert final.getexif().get(0x9003) == "1950:06:01 12:00:00"


def test_plain_jpeg_is_uploaded_unchanged(tmp_path):
    path = _img(tmp_path / "a.jpg", size=(50, 30))
    prep = bj.prepare_upload(path)
    assert prep.data == path.read_bytes() and prep.ext == ".jpg" and prep.size == (50, 30)
    assert prep.sha256 == bj.sha256_file(path)
    assert prep.alpha is None


def test_rgba_alpha_is_restored_on_the_result(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 30, dtype=np.uint8)[None, :]
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    prep = bj.prepare_upload(path)
    server_png = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(server_png, format="PNG")
    final = Image.open(io.BytesIO(bj.finalize_output(server_png.getvalue(), prep)))
    assert final.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(final)[..., 3], rgba[..., 3])
    assert tuple(np.asarray(final)[5, 5, :3]) == (10, 200, 30)
    wrong = io.BytesIO()
    Image.new("RGB", (10, 10)).save(wrong, format="PNG")
    with pytest.raises(ValueError, match="transparency"):
        bj.finalize_output(wrong.getvalue(), prep)


def test_16bit_scan_is_scaled_not_clipped(tmp_path):
    values = np.full((8, 8), 32768, np.uint16)  # mid grey in 16 bits
    path = tmp_path / "scan.png"
    Image.fromarray(values).save(path)
    prep = bj.prepare_upload(path)
    up = np.asarray(Image.open(io.BytesIO(prep.data)).convert("L")).astype(int)
    assert abs(up.mean() - 128) <= 1


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", None])
def test_corrupt_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is None:  # a real JPEG cut in half
        _img(path, size=(200, 200))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(bj.ImageReadError, match="broken.jpg"):
        bj.prepare_upload(path)


def test_unsupported_extension_fails_clearly(tmp_path):
    path = tmp_path / "photo.heic"
    path.write_bytes(b"x")
    with pytest.raises(bj.ImageReadError, match="unsupported file type '.heic'"):
        bj.prepare_upload(path)


# --------------------------------------------------------------------------------------------- workflow


def _shuffled_preset(name="portrait") -> dict:
    """The shipped preset with every node id changed, to prove nodes are found by class_type."""
    wf = aw.load_workflow(aw.preset_path(name))
    mapping = {nid: str(100 + 7 * i) for i, nid in enumerate(reversed(list(wf)))}
    out = {}
    for nid, node in wf.items():
        node = json.loads(json.dumps(node))
        for key, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                node["inputs"][key] = [mapping[value[0]], value[1]]
        out[mapping[nid]] = node
    return out


def _by_class(wf: dict, cls: str) -> list[dict]:
    return [n for n in wf.values() if n["class_type"] == cls]


@pytest.mark.parametrize("preset", ["portrait", "building"])
def test_presets_are_usable(preset):
    wf, info = aw.apply_settings(aw.load_workflow(aw.preset_path(preset)), aw.Settings())
    assert wf[info.load_id]["class_type"] == "LoadImage"
    assert wf[info.result_id]["class_type"] == "SaveImage"
    assert info.compare_out_id is None and not _by_class(wf, "DDColorCompare"), "comparison pruned by default"


def test_patching_by_class_type():
    wf = _shuffled_preset()
    settings = aw.Settings(model="tiny.safetensors", precision="fp32", device="cpu", input_size=256,
                           overrides=(aw.parse_override("DDColorMergeLab.chroma=1.5"),))
    patched, info = aw.apply_settings(wf, settings)
    loader = _by_class(patched, "DDColorModelLoader")[0]["inputs"]
    assert (loader["model_name"], loader["precision"], loader["device"]) == ("tiny.safetensors", "fp32", "cpu")
    resize = _by_class(patched, "DDColorResizeByPreset")[0]["inputs"]
    assert (resize["preset"], resize["custom_size"]) == ("custom", 256)
    assert _by_class(patched, "DDColorMergeLab")[0]["inputs"]["chroma"] == 1.5
    assert set(patched) < set(wf)  # the comparison branch is dropped
    one = aw.for_image(patched, info, "ddcolor_batch/abc.png", "ddcolor_batch/img_abc")
    assert one[info.load_id]["inputs"]["image"] == "ddcolor_batch/abc.png"
    assert one[info.result_id]["inputs"]["filename_prefix"] == "ddcolor_batch/img_abc"
    assert patched[info.load_id]["inputs"]["image"] != "ddcolor_batch/abc.png", "for_image must copy"
    # the settings fingerprint does not depend on the file name, but does on the settings
    other = aw.for_image(patched, info, "ddcolor_batch/zzz.png", "p")
    assert aw.fingerprint_view(one, info) == aw.fingerprint_view(other, info)
    patched2, info2 = aw.apply_settings(wf, aw.Settings(model="tiny.safetensors", input_size=512))
    assert bj.settings_hash(aw.fingerprint_view(patched, info)) != bj.settings_hash(
        aw.fingerprint_view(patched2, info2))


def test_compare_keeps_or_adds_an_output():
    wf = _shuffled_preset()
    patched, info = aw.apply_settings(wf, aw.Settings(compare=True))
    assert patched[info.compare_out_id]["inputs"]["images"][0] == info.compare_id
    assert patched[info.compare_id]["class_type"] == "DDColorCompare"
    # a workflow whose comparison node has no output node gets a PreviewImage attached
    del wf[info.compare_out_id]
    patched, info = aw.apply_settings(wf, aw.Settings(compare=True))
    assert patched[info.compare_out_id] == {"class_type": "PreviewImage", "inputs": {"images": [info.compare_id, 0]}}
    no_compare = {k: v for k, v in wf.items() if v["class_type"] != "DDColorCompare"}
    with pytest.raises(aw.WorkflowError, match="no DDColorCompare"):
        aw.apply_settings(no_compare, aw.Settings(compare=True))


def test_unusable_workflows_are_explained(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(aw.WorkflowError, match="Export \\(API\\)"):
        aw.load_workflow(ui)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(aw.WorkflowError, match="not valid JSON"):
        aw.load_workflow(broken)
    wf = _shuffled_preset()
    two = dict(wf, **{"999": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}})
    with pytest.raises(aw.WorkflowError, match="2 LoadImage"):
        aw.analyse(two)
    no_save = {k: v for k, v in wf.items() if v["class_type"] not in ("SaveImage", "PreviewImage")}
    with pytest.raises(aw.WorkflowError, match="no SaveImage"):
        aw.analyse(no_save)
    with pytest.raises(aw.WorkflowError, match="NoSuchNode"):
        aw.apply_settings(wf, aw.Settings(overrides=(("NoSuchNode", "x", 1),)))
    with pytest.raises(ValueError, match="NODE.input=value"):
        aw.parse_override("chroma=1")
    assert aw.parse_override("DDColorMergeLab.upsample=bilinear") == ("DDColorMergeLab", "upsample", "bilinear")


# --------------------------------------------------------------------------------------------- server answers


def test_server_error_messages_are_readable():
    entry = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"node_id": "4", "node_type": "DDColorColorize", "exception_type": "RuntimeError",
                             "exception_message": "out of memory"}]]}}
    assert history_error(entry) == ("the server failed in DDColorColorize (node 4): RuntimeError: out of memory")
    assert history_error({"status": {"status_str": "success", "completed": True}}) is None
    rejected = {"error": {"message": "Prompt outputs failed validation", "details": ""},
                "node_errors": {"2": {"class_type": "DDColorModelLoader", "errors": [
                    {"message": "Value not in list", "details": "model_name: 'x.pth' not in ['tiny.safetensors']"}]}}}
    text = format_prompt_error(rejected)
    assert "DDColorModelLoader" in text and "x.pth" in text
    assert normalise_url("127.0.0.1:8188/") == "http://127.0.0.1:8188"
    with pytest.raises(ValueError):
        normalise_url("ftp://host")


def test_progress_line_counts_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(4, stream)
    progress.t0 -= 10.0  # 10 s elapsed
    job = bj.Job(Path("/x/a.jpg"), "a.jpg", "a.png", "a.compare.png")
    progress.done(job, True)
    progress.done(job, False, "bad")
    line = progress.line()
    assert "2/4" in line and "0.10 img/s" in line and "ETA 10s" in line and "1 failed" in line
    assert "a.jpg FAILED (bad)" in stream.getvalue()  # not a terminal: one line per image


# --------------------------------------------------------------------------------------------- CLI


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--input-size", "500"])
    assert exc.value.code == 2
    assert "multiple of 32" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty")])
    assert exc.value.code == 2
    assert "no images found" in capsys.readouterr().err


def test_dry_run_lists_work_without_a_server(tmp_path, capsys):
    _img(tmp_path / "in" / "a.jpg")
    _img(tmp_path / "in" / "s" / "b.png")
    code = main([str(tmp_path / "in"), "--dry-run", "--server", "http://127.0.0.1:9"])
    out = capsys.readouterr().out
    assert code == 0
    assert "todo  a.jpg -> a.png" in out and "todo  s/b.png -> s/b.png" in out
    assert not (tmp_path / "in_colorized").exists() or not any((tmp_path / "in_colorized").iterdir())


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from tools.batch_jobs import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_into_the_same_output_folder_is_refused_until_the_first_ends(tmp_path, capsys):
    _img(tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # the lock is checked before anything is sent: the server address does not matter
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path / "in"), "-o", str(out), "--server", "http://127.0.0.1:9"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"another batch_colorize run (process {holder.pid}) is writing to {out}" in err
        assert "-o" in err
        # looking is still allowed while the other run writes
        assert main([str(tmp_path / "in"), "-o", str(out), "--dry-run"]) == 0
        assert "todo  a.jpg -> a.png" in capsys.readouterr().out
    finally:
        holder.kill()  # a killed run (no clean-up of its own) must not block the next one
        holder.wait(timeout=30)
    with bj.OutputLock(out) as lock:
        assert lock.path.read_text() == str(os.getpid())
    with bj.OutputLock(out):  # and it is released again on exit
        pass


def test_output_lock_is_exclusive_within_one_process(tmp_path):
    with bj.OutputLock(tmp_path), pytest.raises(bj.InputError) as exc, bj.OutputLock(tmp_path):
        pass
    assert f"another batch_colorize run (process {os.getpid()}) is writing to {tmp_path}" in str(exc.value)


@pytest.mark.parametrize("how", [["-m", "tools.batch_colorize"], ["tools/batch_colorize.py"]])
def test_runs_as_module_and_as_script(how):
    proc = subprocess.run([sys.executable, *how, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--max-in-flight" in proc.stdout and "--compare" in proc.stdout


# --------------------------------------------------------------------------------------------- runner logic


class FakeServer:
    """Stands in for ComfyClient: scripted history answers, records what was sent.

    ``script`` says, per queued prompt: "ok", "lost" (gone after a restart), "error" (failed on the server),
    "down" (unreachable), "reject" (HTTP 400), "partial" (HTTP 200 with node_errors: the comparison is refused).
    """

    def __init__(self, script, url="http://fake:1", history=None, queue=None):
        self.url = url
        self.script = list(script)
        self.ws_connected = True
        self.retry_timeout = 1.0
        self.queued: list[dict] = []
        self.answers: dict[str, dict | None] = dict(history or {})
        self.queue = list(queue or [])  # [number, prompt_id, prompt, extra_data, outputs]
        self.cancelled: list[str] = []
        self.prompt_ids: list[str] = []
        self.uploads = 0

    async def listen(self, on_event):
        import asyncio

        self.on_event = on_event
        await asyncio.Event().wait()

    async def system_stats(self, retry=False):
        return {"system": {"comfyui_version": "fake"}}

    async def object_info(self, class_type):
        return {"input": {}}

    async def upload_image(self, data, name, subfolder):
        self.uploads += 1
        return f"{subfolder}/{name}"

    def _finish_queued(self, prompt_id):
        item = next(i for i in self.queue if i[1] == prompt_id)
        self.queue.remove(item)
        self.answers[prompt_id] = _ok_entry(item[2], item[3])
        self.on_event({"type": "execution_success", "data": {"prompt_id": prompt_id}})

    async def submit(self, workflow, prompt_id, extra_data=None):
        import asyncio

        from tools.comfy_client import HTTPError, ServerUnavailableError

        for item in list(self.queue):  # prompts of an earlier run finish first
            asyncio.get_running_loop().call_later(0.01, self._finish_queued, item[1])
        what = self.script.pop(0)
        if what == "down":
            raise ServerUnavailableError("ComfyUI has been unreachable for 300 s", "connection refused")
        if what == "reject":
            raise HTTPError("POST", "/prompt", 400, json.dumps({
                "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": ""},
                "node_errors": {"5": {"class_type": "DDColorMergeLab", "errors": [
                    {"type": "value_bigger_than_max", "message": "Value 5.0 bigger than max of 2.0",
                     "details": "chroma"}]}}}).encode())
        self.queued.append(workflow)
        self.prompt_ids.append(prompt_id)
        node_errors = {}
        if what in ("ok", "partial"):
            entry = _ok_entry(workflow, extra_data)
            if what == "partial":
                node_errors = {"10": {"class_type": "DDColorCompare", "errors": [
                    {"type": "value_bigger_than_max", "message": "Value 5.0 bigger than max of 1.0",
                     "details": "split_position"}]}}
                for nid, node in workflow.items():
                    if node["inputs"].get("images", [None])[0] == "10":
                        entry["outputs"].pop(nid, None)
            self.answers[prompt_id] = entry
        elif what == "error":
            self.answers[prompt_id] = {"status": {"status_str": "error", "completed": False, "messages": [
                ["execution_error", {"node_id": "4", "node_type": "DDColorColorize", "exception_type": "ValueError",
                                     "exception_message": "boom"}]]}}
        else:  # lost: neither queued nor in the history (the server restarted)
            self.answers[prompt_id] = None
        # what the websocket would say: finished, or (lost) a reconnection after the restart
        event = {"type": "_connected"} if what == "lost" else {"type": "execution_success",
                                                                "data": {"prompt_id": prompt_id}}
        asyncio.get_running_loop().call_later(0.01, self.on_event, event)
        return {"prompt_id": prompt_id, "number": len(self.queued), "node_errors": node_errors}

    async def history(self, prompt_id):
        return self.answers.get(prompt_id)

    async def history_all(self):
        return {k: v for k, v in self.answers.items() if v is not None}

    async def queue_items(self):
        return list(self.queue)

    async def queued_ids(self):
        return {i[1] for i in self.queue}

    async def view(self, image):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), (200, 100, 50)).save(buf, format="PNG")
        return buf.getvalue()

    async def cancel(self, ids):
        self.cancelled.extend(ids)


def _ok_entry(workflow, extra_data):
    image = next(n for n in workflow.values() if n["class_type"] == "LoadImage")["inputs"]["image"]
    outputs = {nid: {"images": [{"filename": image}]} for nid, n in workflow.items()
               if n["class_type"] in ("SaveImage", "PreviewImage")}
    return {"status": {"status_str": "success", "completed": True}, "outputs": outputs,
            "prompt": [0, "x", workflow, extra_data or {}, list(outputs)]}


_FLOW = {"1": {"class_type": "LoadImage", "inputs": {"image": "x"}},
         "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}},
         "10": {"class_type": "DDColorCompare", "inputs": {"before": ["1", 0], "after": ["1", 0],
                                                            "split_position": 0.5}},
         "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}}


def _run_batch(tmp_path, script, count=2, names=None, servers=None, compare=False, limit=1):
    import asyncio

    from tools.batch_colorize import Runner, Slot

    src = tmp_path / "in"
    if not src.exists():
        for i, name in enumerate(names or [f"p{i}.jpg" for i in range(count)]):
            _img(src / name, color=(10 * i, 10 * i, 10 * i))
    jobs = bj.plan_jobs(bj.discover([src]).files, src.resolve())
    wf, info = aw.apply_settings(_FLOW, aw.Settings(compare=compare))
    out = tmp_path / "out"
    fakes = servers or [FakeServer(script)]
    slots = [Slot(f.url, limit, f) for f in fakes]
    runner = Runner(slots, out, wf, info, "S", bj.Manifest(out), Progress(len(jobs), io.StringIO()),
                    retry_timeout=2.0)
    asyncio.run(runner.run(jobs))
    return runner, fakes[0], out, jobs


def test_lost_prompt_is_sent_again(tmp_path):
    runner, server, out, jobs = _run_batch(tmp_path, ["lost", "ok", "ok"])
    assert [o.ok for o in runner.outcomes] == [True, True]
    assert len(server.queued) == 3  # the first image went twice
    # current ComfyUI accepts a client-chosen prompt_id only as a canonical lowercase hyphenated UUID
    assert all(str(uuid.UUID(pid)) == pid for pid in server.prompt_ids) and len(set(server.prompt_ids)) == 3
    assert all(j.out_path(out).exists() for j in jobs)
    assert sorted(json.loads((out / bj.MANIFEST_NAME).read_text())["entries"]) == ["p0.png", "p1.png"]


def test_server_error_fails_one_image_and_the_batch_goes_on(tmp_path):
    runner, _server, out, jobs = _run_batch(tmp_path, ["error", "ok"])
    assert [o.ok for o in runner.outcomes] == [False, True]
    assert "DDColorColorize (node 4): ValueError: boom" in runner.outcomes[0].reason
    assert not jobs[0].out_path(out).exists() and jobs[1].out_path(out).exists()


def test_server_gone_stops_the_batch_without_marking_images_failed(tmp_path):
    async def never_up(retry=False):
        from tools.comfy_client import ServerUnavailableError

        raise ServerUnavailableError("cannot reach ComfyUI at http://fake:1: refused", "refused")

    server = FakeServer(["ok", "down"])
    original = server.submit

    async def submit(*a, **k):
        answer = await original(*a, **k)
        server.system_stats = never_up  # after the first photo the server is gone for good
        return answer

    server.submit = submit
    runner, _server, out, jobs = _run_batch(tmp_path, None, count=3, servers=[server])
    assert runner.fatal and "no server has answered" in runner.fatal
    assert [o.ok for o in runner.outcomes] == [True]  # nothing counted as failed
    assert sorted(j.rel for j in runner.unfinished) == ["p1.jpg", "p2.jpg"]  # rerun resumes these


def test_lost_three_times_is_a_failure(tmp_path):
    runner, server, _out, _jobs = _run_batch(tmp_path, ["lost", "lost", "lost"], count=1)
    assert len(server.queued) == 3 and not runner.outcomes[0].ok
    assert "lost this image 3 times" in runner.outcomes[0].reason


def test_output_names_is_the_public_rule():
    # other tools (the archive command) write results with exactly these names
    assert bj.output_names(["a.jpg", "sub/b.tif", "c.jpg", "c.png"]) == [
        ("a.png", "a.compare.png"), ("sub/b.png", "sub/b.compare.png"),
        ("c.jpg.png", "c.jpg.compare.png"), ("c.png.png", "c.png.compare.png")]


# --------------------------------------------------------------------------------------------- issue 9: hostile inputs


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://[::1", "http://:8188",
                                 "ftp://host", "http://"])
def test_a_server_url_that_does_not_parse_is_a_one_line_usage_error(tmp_path, capsys, url):
    _img(tmp_path / "in" / "a.jpg")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--server", url])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--server" in err and "http://127.0.0.1:8188" in err, err  # says what is wrong and what would do
    assert not (tmp_path / "out").exists()


def test_output_folder_equal_to_the_input_folder_is_refused_on_every_run(tmp_path, capsys):
    album = tmp_path / "album"
    _img(album / "photo_00.jpg")
    _img(album / "sub" / "photo_01.jpg")
    before = sorted(p.relative_to(album).as_posix() for p in album.rglob("*"))
    for _ in range(2):  # the "resume" would otherwise colorize the first run's outputs
        with pytest.raises(SystemExit) as exc:
            main([str(album), "-o", str(album), "--server", "http://127.0.0.1:9", "--compare"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"output folder {album} is the input folder" in err and "-o" in err, err
        assert sorted(p.relative_to(album).as_posix() for p in album.rglob("*")) == before
    # the same for an output folder above two inputs, whose results would land inside them
    with pytest.raises(SystemExit) as exc:
        main([str(album / "photo_00.jpg"), str(album / "sub"), "-o", str(album), "--dry-run"])
    assert exc.value.code == 2 and "picked up as inputs" in capsys.readouterr().err
    # an output folder inside the input folder is fine: it is never scanned (and the tool says so)
    assert main([str(album), "-o", str(album / "colorized"), "--dry-run"]) == 0
    assert "is inside the input folder" in capsys.readouterr().err


@pytest.mark.parametrize("stem", ["L" * 240, "é" * 120])
def test_names_that_fit_as_outputs_work(tmp_path, stem):
    assert len((stem + ".compare.png").encode()) <= 255
    target = tmp_path / f"{stem}.compare.png"
    bj.write_atomic(target, b"data")
    assert target.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    runner, _server, out, jobs = _run_batch(tmp_path, ["ok"], names=[f"{stem}.jpg"])
    assert [o.ok for o in runner.outcomes] == [True], runner.outcomes
    assert (out / f"{stem}.png").is_file()


def test_a_file_pillow_cannot_identify_is_named_without_python_internals(tmp_path):
    path = tmp_path / "scan 12.jpg"
    path.write_bytes(b"GIF89a but not really")
    with pytest.raises(bj.ImageReadError) as exc:
        bj.prepare_upload(path)
    assert str(path) in str(exc.value) and "BytesIO" not in str(exc.value) and " at 0x" not in str(exc.value)
    assert "not an image Pillow can identify" in str(exc.value)


def test_img_per_second_counts_only_completed_images():
    stream = io.StringIO()
    progress = Progress(10, stream)
    progress.t0 -= 2.0
    job = bj.Job(Path("/x/a.jpg"), "a.jpg", "a.png", "a.compare.png")
    for _ in range(4):
        progress.done(job, False, "cannot read")
    assert "0.00 img/s" in progress.line(), progress.line()
    progress.done(job, True)
    assert "0.50 img/s" in progress.line(), progress.line()


def test_a_rejected_setting_keeps_the_servers_reason():
    rejected = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": ""},
                "node_errors": {"5": {"class_type": "DDColorMergeLab", "errors": [
                    {"type": "value_bigger_than_max", "message": "Value 5.0 bigger than max of 2.0",
                     "details": "chroma"}]}}}
    assert "node 5 (DDColorMergeLab): chroma: Value 5.0 bigger than max of 2.0" in format_prompt_error(rejected)


def test_a_workflow_the_server_rejects_stops_the_batch_before_a_second_photo(tmp_path):
    runner, server, out, _jobs = _run_batch(tmp_path, ["reject", "ok", "ok"], count=3, limit=2)
    assert runner.usage_error and "Value 5.0 bigger than max of 2.0" in runner.usage_error
    assert "DDColorMergeLab" in runner.usage_error
    assert server.script == ["ok", "ok"], "nothing else may be sent once the workflow is refused"
    assert not runner.outcomes and len(runner.unfinished) == 3
    assert not out.exists() or not list(out.rglob("*.png"))


def test_an_output_the_server_drops_keeps_the_others(tmp_path):
    # HTTP 200 with node_errors: the comparison was refused, the colorized image was still made
    runner, server, out, jobs = _run_batch(tmp_path, ["partial", "ok"], count=2, compare=True, limit=2)
    assert runner.usage_error and "split_position: Value 5.0 bigger than max of 1.0" in runner.usage_error
    assert len(server.queued) == 1, "the refusal is the same for every photo: no second one is sent"
    (outcome,) = runner.outcomes  # the photo that was sent (either one may be first)
    job = outcome.job
    assert job.out_path(out).is_file(), "the colorized result the server made is kept"
    assert not job.compare_path(out).exists()
    assert not outcome.ok and f"saved the colorized image {job.out_rel}" in outcome.reason
    assert [j.rel for j in runner.unfinished] == [j.rel for j in jobs if j is not job]
    entry = json.loads((out / bj.MANIFEST_NAME).read_text())["entries"][job.out_rel]
    assert entry["compare_size"] is None  # a rerun with --compare makes the comparison


def test_the_cli_exits_2_with_the_servers_reason(tmp_path, capsys, monkeypatch):
    from tools import batch_colorize as bc

    _img(tmp_path / "in" / "a.jpg")
    _img(tmp_path / "in" / "b.jpg")
    fake = FakeServer(["reject", "ok"], url="http://127.0.0.1:8188")

    class Client:
        def __init__(self, url, **kw):
            self.url = url

        async def __aenter__(self):
            return fake

        async def __aexit__(self, *exc):
            return None

    monkeypatch.setattr(bc, "ComfyClient", Client)
    code = main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "rejected the workflow" in err and "chroma: Value 5.0 bigger than max of 2.0" in err, err
    assert err.count("rejected the workflow") == 1  # once, not once per photo


def _earlier_prompt(tmp_path, job, done: bool):
    """What a killed run left on the server: a finished (or still queued) prompt tagged with this job."""
    from tools.batch_colorize import job_tag

    wf, info = aw.apply_settings(_FLOW, aw.Settings())
    prompt = aw.for_image(wf, info, "ddcolor_batch/earlier.jpg", "p")
    extra = {"ddcolor_batch": job_tag(job, tmp_path / "out", "S", False), "client_id": "killed-run"}
    if done:
        return {"old-done": _ok_entry(prompt, extra)}, []
    return {}, [[1, "old-queued", prompt, extra, ["9"]]]


@pytest.mark.parametrize("done", [True, False])
def test_prompts_of_a_killed_run_are_collected_not_sent_again(tmp_path, done):
    src = tmp_path / "in"
    for i in range(3):
        _img(src / f"p{i}.jpg", color=(10 * i, 10 * i, 10 * i))
    jobs = bj.plan_jobs(bj.discover([src]).files, src.resolve())
    history, queue = _earlier_prompt(tmp_path, jobs[1], done)
    server = FakeServer(["ok", "ok", "ok"], history=history, queue=queue)
    runner, _server, out, jobs = _run_batch(tmp_path, None, servers=[server], limit=2)
    assert [o.ok for o in runner.outcomes] == [True] * 3, runner.outcomes
    assert len(server.queued) == 2 and server.uploads == 2, "p1 was on the server already: collected, not resent"
    assert all(j.out_path(out).is_file() for j in jobs)
    # a prompt of other settings (another tag) is not taken for ours
    other = FakeServer(["ok"] * 3, history={"x": _ok_entry(_FLOW, {"ddcolor_batch": "someone-else"})})
    for path in out.iterdir():
        path.unlink()
    runner, *_ = _run_batch(tmp_path, None, servers=[other], limit=2)
    assert len(other.queued) == 3


# --------------------------------------------------------------------------------------------- several servers


def test_servers_from_the_command_line_and_a_file(tmp_path):
    from tools.batch_colorize import build_parser, parse_servers

    listing = tmp_path / "servers.txt"
    listing.write_text("# the GPU boxes\nhttp://gpu1:8188 8\n\ngpu2:8188   # the old one\n")
    args = build_parser().parse_args(["in", "--server", "http://a:1#3", "--server", "b:2", "--server-list",
                                      str(listing), "--max-in-flight", "2"])
    assert parse_servers(args) == [("http://a:1", 3), ("http://b:2", 2), ("http://gpu1:8188", 8),
                                   ("http://gpu2:8188", 2)]
    assert parse_servers(build_parser().parse_args(["in"])) == [("http://127.0.0.1:8188", 2)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--server", "http://a:8188", "--server", "http://A:8188/"], "is given twice"),
    (["--server", "http://a:8188#0"], "at least 1"),
    (["--server-list", "{missing}"], "No such file"),
])
def test_bad_server_lists_are_usage_errors(tmp_path, capsys, argv, message):
    _img(tmp_path / "in" / "a.jpg")
    argv = [a.replace("{missing}", str(tmp_path / "nope.txt")) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_photos_of_a_server_that_goes_down_are_done_by_the_other(tmp_path):
    from tools.comfy_client import ServerUnavailableError

    a = FakeServer(["ok", "down"], url="http://a:1")
    b = FakeServer(["ok"] * 6, url="http://b:1")

    async def gone(retry=False):
        raise ServerUnavailableError("cannot reach ComfyUI at http://a:1: refused", "refused")

    original = a.submit

    async def submit(*args, **kw):
        try:
            return await original(*args, **kw)
        finally:
            if not a.script:
                a.system_stats = gone  # down for good after its second photo

    a.submit = submit
    runner, _a, out, jobs = _run_batch(tmp_path, None, count=6, servers=[a, b])
    assert [o.ok for o in runner.outcomes] == [True] * 6 and not runner.unfinished and not runner.fatal
    done_by = json.loads((out / bj.MANIFEST_NAME).read_text())["entries"]
    assert sorted(done_by) == sorted(j.out_rel for j in jobs)
    counts = {url: sum(e["server"] == url for e in done_by.values()) for url in ("http://a:1", "http://b:1")}
    assert counts["http://a:1"] == 1 and counts["http://b:1"] == 5, counts
    assert [s.done for s in runner.slots] == [1, 5]


def test_output_folder_that_cannot_be_written_stops_the_batch(tmp_path, monkeypatch):
    calls = []
    real = bj.write_atomic

    def full_disk(path, data):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    from tools import batch_colorize as bc

    monkeypatch.setattr(bc, "write_atomic", full_disk)
    runner, server, out, jobs = _run_batch(tmp_path, ["ok"] * 4, count=4)
    assert runner.fatal and "No space left on device" in runner.fatal and "-o" in runner.fatal
    assert len(runner.unfinished) >= 3 and not [o for o in runner.outcomes if not o.ok]
    assert len(server.queued) <= 2


def test_an_output_folder_that_cannot_be_created_is_a_usage_error(tmp_path, capsys):
    _img(tmp_path / "in" / "a.jpg")
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "in"), "-o", str(tmp_path / "file" / "out"), "--server", "http://127.0.0.1:9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot write into the output folder {tmp_path / 'file' / 'out'}" in err and "-o" in err, err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_usage_error(tmp_path, capsys):
    _img(tmp_path / "in" / "a.jpg")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path / "in"), "-o", str(out), "--server", "http://127.0.0.1:9"])
        assert exc.value.code == 2 and "Permission denied" in capsys.readouterr().err
    finally:
        out.chmod(0o700)


def test_a_server_that_comes_back_takes_photos_again(tmp_path):
    import asyncio

    from tools.comfy_client import ServerUnavailableError

    a = FakeServer(["down"] + ["ok"] * 12, url="http://a:1")
    b = FakeServer(["ok"] * 12, url="http://b:1")
    original_stats = a.system_stats
    calls = {"n": 0}

    async def flaky(retry=False):
        calls["n"] += 1
        if calls["n"] == 2:  # unreachable for the first probe after it went down
            raise ServerUnavailableError("cannot reach ComfyUI at http://a:1: refused", "refused")
        return await original_stats()

    a.system_stats = flaky
    slow_submit = b.submit

    async def slow(*args, **kw):  # b takes 0.3 s a photo, so a is back before the end
        await asyncio.sleep(0.3)
        return await slow_submit(*args, **kw)

    b.submit = slow
    runner, _a, out, jobs = _run_batch(tmp_path, None, count=12, servers=[a, b])
    assert [o.ok for o in runner.outcomes] == [True] * 12 and not runner.unfinished
    assert runner.slots[0].done >= 1, ("the server that came back did photos again", calls,
                                       runner.progress.stream.getvalue())
    assert runner.slots[0].done + runner.slots[1].done == 12


def test_a_collected_prompt_whose_files_are_gone_is_colorized_again(tmp_path):
    from tools.comfy_client import HTTPError

    src = tmp_path / "in"
    for i in range(2):
        _img(src / f"p{i}.jpg", color=(10 * i, 10 * i, 10 * i))
    jobs = bj.plan_jobs(bj.discover([src]).files, src.resolve())
    history, _queue = _earlier_prompt(tmp_path, jobs[0], done=True)
    server = FakeServer(["ok", "ok"], history=history)
    real_view = server.view

    async def view(image):
        if "earlier" in image["filename"]:  # someone emptied ComfyUI/output meanwhile
            raise HTTPError("GET", "/view", 404, b"")
        return await real_view(image)

    server.view = view
    runner, *_ = _run_batch(tmp_path, None, servers=[server], limit=1)
    assert [o.ok for o in runner.outcomes] == [True, True], runner.outcomes
    assert len(server.queued) == 2
