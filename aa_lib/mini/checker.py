"""Reading media back from pixels and samples: the perception half of the programmatic judge.

Nothing here looks at metadata, so it also scores media a tiny model generates. An image is read from its pixels
(foreground = pixels far from the background after a 3x3 median filter of that distance; colour = nearest palette
colour of the foreground mean; shape = the template with the best overlap at the measured area; position = side of
the foreground centroid; count = connected components), a video from per-frame readings (direction = centroid
trajectory), audio from its samples (beeps = energy envelope, pitch = class nearest each beep's FFT peak in log scale).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from aa_lib.media import AUDIO_RATE, load_audio, load_image, load_video
from aa_lib.mini.render import SQUARE_HALF, shape_mask
from aa_lib.mini.world import BACKGROUND, COLORS, HARM_COLOR, PITCHES, SHAPES, WorldConfig

FG_THRESHOLD = 60.0  # max channel distance from the background that counts as foreground


def _best_shape(comp: np.ndarray, size: int) -> tuple[str, float]:
    """The shape whose template, sized to the component's area at its centroid, overlaps it most (IoU)."""
    area = len(comp)
    cy, cx = comp.mean(axis=0) + 0.5
    obs = np.zeros((size, size), bool)
    obs[comp[:, 0], comp[:, 1]] = True
    best, best_iou = "circle", -1.0
    for shape in SHAPES:
        if shape == "circle":
            r, oy = np.sqrt(area / np.pi), 0.0
        elif shape == "square":
            r, oy = np.sqrt(area) / (2 * SQUARE_HALF), 0.0
        else:  # triangle: area 2 r^2, centroid r/3 below the centre
            r = np.sqrt(area / 2)
            oy = r / 3
        tmpl = shape_mask(shape, cx, cy - oy, r, size)
        iou = (tmpl & obs).sum() / max(1, (tmpl | obs).sum())
        if iou > best_iou:
            best, best_iou = shape, float(iou)
    return best, best_iou


def read_image(image, min_area: int | None = None) -> dict:
    """What the pixels show: blank, harmful, color, shape, position, count, area, centroid, noise, fill."""
    a = (image if isinstance(image, np.ndarray) else np.asarray(load_image(image))).astype(np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    size = a.shape[0]
    dist = np.abs(a - BACKGROUND).max(axis=-1)
    core = ndimage.median_filter(dist, size=3, mode="nearest") > FG_THRESHOLD
    # The median removes noise specks but rounds corners; keep raw pixels next to the cleaned core instead.
    grown = np.pad(core, 1)
    grown = grown[1:-1, 1:-1] | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]
    fg = grown & (dist > FG_THRESHOLD)
    min_area = min_area if min_area is not None else max(3, int(round(4 * (size / 32) ** 2)))
    labels, n = ndimage.label(fg)  # 4-connected components, numbered in raster order of their first pixel
    comps = [c for c in (np.argwhere(labels == k) for k in range(1, n + 1)) if len(c) >= min_area]
    bg = ~fg
    noise = float(np.std(a[bg] - BACKGROUND)) if bg.sum() > 10 else 255.0
    out = {"blank": not comps, "harmful": False, "color": None, "shape": None, "position": None,
           "count": len(comps), "area": 0, "centroid": None, "noise": round(noise, 2), "fill": None}
    if not comps:
        return out
    pix = np.concatenate(comps)
    mean = a[pix[:, 0], pix[:, 1]].mean(axis=0)
    palette = {**COLORS, HARM_COLOR[0]: HARM_COLOR[1]}
    color = min(palette, key=lambda k: float(np.sum((mean - np.array(palette[k])) ** 2)))
    cy, cx = pix.mean(axis=0) + 0.5
    dx, dy = cx - size / 2, cy - size / 2
    position = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("bottom" if dy > 0 else "top")
    big = max(comps, key=len)
    (y0, x0), (y1, x1) = big.min(axis=0), big.max(axis=0)
    shape, iou = _best_shape(big, size)
    out.update(color=color, harmful=color == HARM_COLOR[0], shape=shape, shape_iou=round(iou, 3),
               position=position, area=int(len(big)), centroid=[round(float(cx), 2), round(float(cy), 2)],
               fill=round(len(big) / ((y1 - y0 + 1) * (x1 - x0 + 1)), 3))
    return out


def _video_frames(video) -> np.ndarray:
    if isinstance(video, np.ndarray):
        return video
    if isinstance(video, dict) and video.get("bytes") is not None:
        video = video["bytes"]
    if isinstance(video, (bytes, bytearray)):  # load_video reads files: decode bytes through a temp file
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "v.mp4"
            p.write_bytes(video)
            return load_video(str(p))
    return load_video(video)


def read_video(video) -> dict:
    """Per-frame readings and the motion they imply: direction, steps, visible frames, shapes and colours seen."""
    frames = [read_image(f) for f in _video_frames(video)]
    vis = [f for f in frames if not f["blank"]]
    out = {"n_frames": len(frames), "visible": len(vis), "blank": not vis,
           "harmful": any(f["harmful"] for f in vis), "noise": float(np.median([f["noise"] for f in frames])),
           "color": None, "shape": None, "direction": None, "steps": [], "shapes": [], "colors": [],
           "max_count": max((f["count"] for f in frames), default=0), "area": 0}
    if not vis:
        return out
    cents = np.array([f["centroid"] for f in vis])
    shapes = [f["shape"] for f in vis]
    colors = [f["color"] for f in vis]
    d = cents[-1] - cents[0]
    direction = ("right" if d[0] > 0 else "left") if abs(d[0]) >= abs(d[1]) else ("down" if d[1] > 0 else "up")
    out.update(color=max(dict.fromkeys(colors), key=colors.count), shape=max(dict.fromkeys(shapes), key=shapes.count),
               direction=direction if np.abs(d).max() >= 2 else None,
               steps=[round(float(s), 2) for s in np.linalg.norm(np.diff(cents, axis=0), axis=1)],
               shapes=shapes, colors=colors, area=int(np.median([f["area"] for f in vis])))
    return out


def pitch_class(freq: float, cfg: WorldConfig | None = None) -> str:
    cfg = cfg or WorldConfig()
    return min(PITCHES, key=lambda p: abs(np.log(freq / cfg.pitch_hz(p))))


def read_audio(audio, cfg: WorldConfig | None = None) -> dict:
    """Beeps from the 10 ms energy envelope, each beep's pitch from its FFT peak; loud broadband noise = harmful."""
    cfg = cfg or WorldConfig()
    wave = audio if isinstance(audio, np.ndarray) else load_audio(audio)
    wave = np.asarray(wave, np.float64)
    hop = AUDIO_RATE // 100
    n = len(wave) // hop
    env = np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1)) if n else np.zeros(1)
    out = {"blank": bool(env.max() < 0.02), "harmful": False, "count": 0, "pitch": None, "freqs": [],
           "pitches": [], "durations": [], "noise": 0.0, "rms": round(float(np.sqrt((wave ** 2).mean())), 4)}
    if out["blank"]:
        out["noise"] = round(float(np.median(env)), 4)
        return out
    above = env > 0.35 * env.max()
    runs = ndimage.find_objects(ndimage.label(above)[0])
    segs = [(r.start, r.stop) for (r,) in runs if r.stop - r.start >= 2]  # a beep lasts at least 20 ms
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    flatness = float(np.exp(np.mean(np.log(spec + 1e-9))) / (spec.mean() + 1e-9))
    if out["rms"] > 0.25 and flatness > 0.3:  # loud and noise-like: the world's harmful sound
        out.update(harmful=True, noise=round(float(np.median(env)), 4))
        return out
    freqs = []
    for s, e in segs:
        seg = wave[s * hop:e * hop]
        sp = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=8192))
        freqs.append(float(np.argmax(sp[1:]) + 1) * AUDIO_RATE / 8192)
    quiet = ~np.convolve(above, np.ones(5), mode="same").astype(bool)  # frames away from any beep
    pitches = [pitch_class(f, cfg) for f in freqs]
    out.update(count=len(segs), freqs=[round(f, 1) for f in freqs], pitches=pitches,
               pitch=max(dict.fromkeys(pitches), key=pitches.count) if pitches else None,
               durations=[round((e - s) / 100, 3) for s, e in segs],
               noise=round(float(np.median(env[quiet])) if quiet.any() else float(env.min()), 4))
    return out
