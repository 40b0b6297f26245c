"""Reading and writing media without datasets' torchcodec path: images (Pillow), audio (soundfile), video (PyAV).

Readers accept what align-anything rows hold: bytes, a path (relative paths resolve under a media root and may not
escape it), a PIL image, a datasets-style dict ({"bytes", "path"} or {"array", "sampling_rate"}), or a folder of
frames for video. Every failure raises `MediaError` with the reason; `aa_lib.data` adds the row and column.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

AUDIO_RATE = 16_000  # the paper's audio models (Qwen2-Audio) read 16 kHz
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


class MediaError(ValueError):
    """A media value that cannot be read: missing file, corrupt bytes, a path outside the media root."""


def resolve_path(path: str | os.PathLike, media_root: str | os.PathLike | None) -> Path:
    """Resolve a row's media path; a relative one must stay in `media_root` (no `../` escapes, no symlink tricks)."""
    p = Path(path)
    if media_root is None:
        return p.resolve()
    root = Path(media_root).resolve()
    full = (p if p.is_absolute() else root / p).resolve()
    if full != root and root not in full.parents:
        raise MediaError(f"path {str(path)!r} escapes the media root {str(root)!r}")
    return full


def _existing(path, media_root) -> Path:
    full = resolve_path(path, media_root)
    if not full.exists():
        raise MediaError(f"media file not found: {str(full)!r}")
    return full


# ---------------------------------------------------------------- images
def load_image(value, media_root=None) -> Image.Image:
    """An RGB PIL image from bytes, a path, a PIL image or a {"bytes", "path"} dict."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise MediaError("no image (empty value)")
    try:
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        else:
            img = Image.open(_existing(value, media_root))
        img.load()  # decode now, so corrupt data fails here and not inside a collator
        return img.convert("RGB")
    except MediaError:
        raise
    except Exception as e:  # Pillow raises several types for corrupt data
        raise MediaError(f"cannot decode image: {type(e).__name__}: {e}") from None


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img.astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- audio
def load_audio(value, media_root=None, target_rate: int = AUDIO_RATE) -> np.ndarray:
    """A mono float32 waveform at `target_rate` from a wav/flac path, bytes, or an {"array", "sampling_rate"} dict."""
    import soundfile as sf

    if isinstance(value, dict) and value.get("array") is not None:
        wave = np.asarray(value["array"], dtype=np.float32)
        rate = int(value.get("sampling_rate") or target_rate)
    else:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if value is None:
            raise MediaError("no audio (empty value)")
        src = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else _existing(value, media_root)
        try:
            wave, rate = sf.read(src, dtype="float32", always_2d=True)
        except Exception as e:
            raise MediaError(f"cannot decode audio: {type(e).__name__}: {e}") from None
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        wave = wave.reshape(len(wave), -1).mean(axis=1)
    if not np.all(np.isfinite(wave)):
        raise MediaError("audio holds NaN or infinite samples")
    if rate == target_rate or len(wave) == 0:
        return wave
    n = int(round(len(wave) * target_rate / rate))
    return np.interp(np.arange(n) / target_rate, np.arange(len(wave)) / rate, wave).astype(np.float32)


def encode_wav(wave: np.ndarray, rate: int = AUDIO_RATE) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------- video
# Decoded videos, by file identity and frame count. Every generation, training and scoring call builds its own
# collator (whose memo lives as long as it does), so without this the same held-out video is opened and decoded once
# per call: ~13 ms with PyAV for a tiny mp4, 30 % of a tv2t llf_main run (5,668 decodes of ~560 files). Callers get a
# copy; a file rewritten in place (new inode, size or mtime) is read anew.
VIDEO_CACHE_BYTES = 256 * 2 ** 20  # 0 turns the cache off
_videos: OrderedDict = OrderedDict()
_videos_lock = threading.Lock()


def file_identity(path: str | os.PathLike) -> tuple:
    """Resolved path + stat (a folder of frames: each frame's stat too): what a decode of the file depends on."""
    full = Path(path).resolve()
    st = full.stat()
    ident = (str(full), st.st_ino, st.st_mtime_ns, st.st_size)
    if full.is_dir():
        frames = [f for f in sorted(full.iterdir()) if f.suffix.lower() in FRAME_SUFFIXES]
        ident += tuple((f.name, st.st_mtime_ns, st.st_size) for f, st in zip(frames, map(Path.stat, frames)))
    return ident


def load_video(value, media_root=None, num_frames: int | None = None) -> np.ndarray:
    """Frames as a uint8 array (T, H, W, 3) from an mp4 (PyAV) or a folder of frame images, optionally subsampled."""
    if isinstance(value, dict):
        value = value.get("path")
    if value is None:
        raise MediaError("no video (empty value)")
    full = _existing(value, media_root)
    key = (file_identity(full), num_frames)
    with _videos_lock:
        if key in _videos and VIDEO_CACHE_BYTES > 0:
            _videos.move_to_end(key)
            return _videos[key].copy()
    video = _decode_video(full)
    if num_frames is not None and len(video) != num_frames:
        video = video[np.linspace(0, len(video) - 1, num_frames).round().astype(int)]
    with _videos_lock:
        if video.nbytes <= VIDEO_CACHE_BYTES // 8:  # a long real video: not worth evicting everything else for
            _videos[key] = video
        while _videos and sum(v.nbytes for v in _videos.values()) > VIDEO_CACHE_BYTES:
            _videos.popitem(last=False)
    return video.copy()


def _decode_video(full: Path) -> np.ndarray:
    if full.is_dir():
        files = sorted(f for f in full.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise MediaError(f"video folder {str(full)!r} holds no frame images")
        frames = [np.asarray(load_image(str(f))) for f in files]
    else:
        import av

        try:
            with av.open(str(full)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except Exception as e:
            raise MediaError(f"cannot decode video: {type(e).__name__}: {e}") from None
        if not frames:
            raise MediaError(f"video {str(full)!r} holds no frames")
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: int = 4) -> bytes:
    """H.264 mp4 bytes (yuv444, crf 0: lossless enough that colours survive a round trip)."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# ---------------------------------------------------------------- atomic writes
def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file beside `path`, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_folder_atomic(out_dir: str | os.PathLike, write) -> Path:
    """`write(tmp_folder)` fills a temp folder beside `out_dir`, which then replaces `out_dir` in two renames:
    a crash leaves either the old folder or the new one, never a half-written model or dataset."""
    import shutil

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir
