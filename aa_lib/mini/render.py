"""Rendering scenes to pixels and samples: images (H, W, 3) uint8, videos (T, H, W, 3) uint8, audio float32 at 16 kHz.

A scene dict (see `world.py`) holds every render parameter, noise seed included, so a render is a pure function of
it. Respondents' faults arrive as extra scene keys: `noise` (pixel or sample std), `blank` (nothing drawn: a
refusal), `harmful` (the world's harmful content: a black cross / a loud noise burst), and per modality `jitter`,
`flicker`, `morph` (video), `wobble`, `short` (audio).
"""
from __future__ import annotations

import numpy as np

from aa_lib.media import AUDIO_RATE
from aa_lib.mini.world import BACKGROUND, COLORS, HARM_COLOR, SHAPES

_BASE = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
SQUARE_HALF = 0.85  # a square's half side, in radii: keeps its area near the circle's


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape; pixel centres sit at i + 0.5."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = SQUARE_HALF * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":  # apex up, base 2r wide at cy + r: fills half of its bounding box
        return (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
    if shape == "cross":
        d1, d2 = np.abs((xx - cx) - (yy - cy)), np.abs((xx - cx) + (yy - cy))
        inside = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        return inside & ((d1 <= 2.0) | (d2 <= 2.0))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def object_centres(scene: dict, size: int) -> tuple[list[tuple[float, float]], float]:
    """Centres and radius (pixels) of the scene's shapes: `count` copies spread across the side `position` names."""
    scale = size / 32
    bx, by = _BASE[scene["position"]]
    n = int(scene.get("count", 1))
    r = scene["radius"] * scale
    if n == 1:
        return [(bx * size + scene.get("dx", 0) * scale, by * size + scene.get("dy", 0) * scale)], r
    r = min(r, 0.38 * size / n)
    along = [size * (k + 0.5) / n for k in range(n)]
    if scene["position"] in ("left", "right"):
        return [(bx * size, a) for a in along], r
    return [(a, by * size) for a in along], r


def _finish(canvas: np.ndarray, noise: float, rng) -> np.ndarray:
    if noise > 0:
        canvas = canvas + rng.normal(0.0, noise, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _paint(canvas, scene, size, centres, r):
    if scene.get("harmful"):
        c = centres[0]
        canvas[shape_mask("cross", c[0], c[1], max(r, 0.3 * size), size)] = HARM_COLOR[1]
    elif not scene.get("blank"):
        for cx, cy in centres:
            canvas[shape_mask(scene["shape"], cx, cy, r, size)] = COLORS[scene["color"]]


def render_image(scene: dict, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(scene["noise_seed"])
    canvas = np.full((size, size, 3), BACKGROUND, np.float64)
    if scene.get("harmful"):
        centres, r = [(size / 2, size / 2)], 0.35 * size
    else:
        centres, r = object_centres(scene, size)
    _paint(canvas, scene, size, centres, r)
    return _finish(canvas, float(scene.get("noise", 5.0)), rng)


def video_track(scene: dict, size: int) -> list[tuple[float, float]]:
    """The shape's centre per frame: a straight, evenly spaced move across a quarter-to-three-quarters span."""
    t_n = int(scene["n_frames"])
    off = scene.get("offset", 0.0) * size / 32
    lo, hi, mid = 0.25 * size, 0.75 * size, 0.5 * size + off
    start, end = {"right": ((lo, mid), (hi, mid)), "left": ((hi, mid), (lo, mid)),
                  "down": ((mid, lo), (mid, hi)), "up": ((mid, hi), (mid, lo))}[scene["direction"]]
    return [(start[0] + (end[0] - start[0]) * t / (t_n - 1), start[1] + (end[1] - start[1]) * t / (t_n - 1))
            for t in range(t_n)]


def render_video(scene: dict, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(scene["noise_seed"])
    track = video_track(scene, size)
    r = scene["radius"] * size / 32
    frames = []
    for t, (cx, cy) in enumerate(track):
        if scene.get("jitter") and 0 < t < len(track) - 1:
            jit = scene["jitter"] * size / 32
            cx, cy = cx + rng.uniform(-jit, jit), cy + rng.uniform(-jit, jit)
        canvas = np.full((size, size, 3), BACKGROUND, np.float64)
        blank = scene.get("blank") or (scene.get("flicker") is not None and t == scene["flicker"])
        shape = scene.get("morph") if scene.get("morph") and t >= len(track) // 2 else scene["shape"]
        _paint(canvas, {**scene, "shape": shape, "blank": blank}, size, [(cx, cy)],
               0.35 * size if scene.get("harmful") else r)
        frames.append(_finish(canvas, float(scene.get("noise", 5.0)), rng))
    return np.stack(frames)


BEEP_SECONDS = 0.12  # each beep; `short` beeps last 0.04 s
BEEP_STARTS = (0.05, 0.29, 0.53)  # at most three beeps in a 0.75 s clip


def render_audio(scene: dict) -> np.ndarray:
    rng = np.random.default_rng(scene["noise_seed"])
    n_samples = int(round(scene["seconds"] * AUDIO_RATE))
    wave = np.zeros(n_samples, np.float64)
    if scene.get("harmful"):
        wave = np.clip(rng.normal(0.0, 0.6, n_samples), -0.95, 0.95)
    elif not scene.get("blank"):
        stretch = scene["seconds"] / 0.75
        dur = (0.04 if scene.get("short") else BEEP_SECONDS) * stretch
        wobble = scene.get("wobble") or []
        for k in range(int(scene["count"])):
            freq = wobble[k] if k < len(wobble) else scene["freq"]
            start = int(BEEP_STARTS[k] * stretch * AUDIO_RATE)
            t = np.arange(int(dur * AUDIO_RATE)) / AUDIO_RATE
            env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)  # 5 ms ramps: no clicks
            seg = 0.5 * env * np.sin(2 * np.pi * freq * t)
            wave[start:start + len(seg)] += seg[: n_samples - start]
    noise = float(scene.get("noise", 0.004))
    if noise > 0 and not scene.get("harmful"):
        wave = wave + rng.normal(0.0, noise, n_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def render(scene: dict, size: int = 32) -> np.ndarray:
    """Render any scene by its kind."""
    kind = scene.get("kind")
    if kind == "image":
        return render_image(scene, size)
    if kind == "video":
        return render_video(scene, size)
    if kind == "audio":
        return render_audio(scene)
    raise ValueError(f"scene kind {kind!r} has no media")
