"""The video preset on a real ComfyUI server: a tiny generated film in, a colour film out.

The films are made here with PyAV (which ComfyUI installs): a slow pan over the NASA photo in
``assets/astronaut_bw.jpg``, H.264, with or without an AAC sine tone, at a constant or a variable frame rate.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.e2e.server import REPO_ROOT, load_api_preset, node_ids, set_inputs

pytestmark = pytest.mark.e2e

WIDTH, HEIGHT, FRAMES, FPS = 96, 64, 10, 12
AUDIO_RATE = 16000


def _frames() -> list[np.ndarray]:
    photo = cv2.imread(str(REPO_ROOT / "assets" / "astronaut_bw.jpg"), cv2.IMREAD_GRAYSCALE)
    out = []
    for i in range(FRAMES):
        crop = photo[100 + 4 * i: 340 + 4 * i, 80 + 6 * i: 440 + 6 * i]
        grey = cv2.resize(crop, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
        out.append(np.repeat(grey[..., None], 3, axis=-1))
    return out


def make_film(path: Path, audio: bool, variable_rate: bool = False) -> None:
    with av.open(str(path), mode="w") as film:
        video = film.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.time_base = Fraction(1, FPS * 10)
        video.codec_context.time_base = video.time_base  # timestamps in 1/120 s, also inside the encoder
        video.options = {"bf": "0"}  # no B-frames: irregular timestamps stay in decoding order
        tone = film.add_stream("aac", rate=AUDIO_RATE) if audio else None
        pts = 0
        for i, rgb in enumerate(_frames()):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts
            frame.time_base = video.time_base
            pts += 10 if not variable_rate else (5 if i % 2 else 15)  # 1/24 s and 1/8 s alternately
            for packet in video.encode(frame):
                film.mux(packet)
        film.mux(video.encode(None))
        if tone is not None:
            samples = int(AUDIO_RATE * FRAMES / FPS)
            wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / AUDIO_RATE)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = AUDIO_RATE, 0
            for packet in tone.encode(frame):
                film.mux(packet)
            film.mux(tone.encode(None))


def _probe(path: Path) -> dict:
    with av.open(str(path)) as film:
        stream = film.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in film.decode(video=0)]
        return {"frames": frames, "rate": stream.average_rate, "size": (stream.width, stream.height),
                "audio": len(film.streams.audio)}


def _run_preset(server, film: Path) -> tuple[Path, dict]:
    name = server.upload(film)
    prompt = load_api_preset("ddcolor_video")
    set_inputs(prompt, "LoadVideo", file=name)
    set_inputs(prompt, "DDColorModelLoader", model_name=server.model_name)
    set_inputs(prompt, "DDColorColorize", batch_size=4)
    _msgs, entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    saved = entry["outputs"][node_ids(prompt, "SaveVideo")[0]]
    files = saved.get("images") or saved.get("videos") or saved.get("gifs")
    assert files and len(files) == 1, saved
    info = files[0]
    path = server.output_dir / info.get("subfolder", "") / info["filename"]
    assert path.exists(), path
    report = entry["outputs"].get(node_ids(prompt, "DDColorTemporalSmooth")[0], {}).get("text")
    return path, {"report": report}


@pytest.mark.parametrize("audio", [True, False], ids=["with_audio", "no_audio"])
def test_the_video_preset_makes_a_colour_film_like_the_input(comfy_server, tmp_path, audio):
    film = tmp_path / f"old_film_{'sound' if audio else 'silent'}.mp4"
    make_film(film, audio=audio)
    source = _probe(film)
    assert len(source["frames"]) == FRAMES and source["audio"] == int(audio)
    result_path, extra = _run_preset(comfy_server, film)
    result = _probe(result_path)
    assert len(result["frames"]) == FRAMES
    assert result["rate"] == source["rate"] == FPS
    assert result["size"] == (WIDTH, HEIGHT)
    assert result["audio"] == int(audio)
    colour = np.stack(result["frames"]).astype(np.int16)
    assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 2.0  # it has colour (the input is grey)
    assert extra["report"] and f"{FRAMES} frame(s)" in extra["report"][0]


def test_a_variable_frame_rate_film_keeps_every_frame_at_its_average_rate(comfy_server, tmp_path):
    film = tmp_path / "variable_rate.mp4"
    make_film(film, audio=True, variable_rate=True)
    source = _probe(film)
    result = _probe(_run_preset(comfy_server, film)[0])
    assert len(result["frames"]) == len(source["frames"]) == FRAMES
    assert abs(float(result["rate"]) - float(source["rate"])) < 0.01
