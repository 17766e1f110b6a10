"""Photos of simulated birds: small RGB images drawn from a species' visual traits.

The bird (body, belly, wing, tail, head, eye, beak, legs and its plumage pattern) is drawn with
PIL at twice the output size, posed (flip, rotation, scale, position), composited over a
cluttered background (colour gradient and noise, branches, leaves, sometimes a leaf in front),
reduced to ``image_size`` and lit (brightness, colour cast, sensor noise).

Difficulty knobs (`songsight.sim.world.WorldConfig`):

* ``photo_jitter``: scales pose, scale, position and lighting variation.
* ``clutter``: scales background noise, the number of leaves and branches, and occluders.

Styles mimic the sources: ``nabirds`` birds are large and centred, ``inat`` and ``pretrain``
birds vary more in scale and position.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from songsight.sim.world import VisualTraits, World

STYLES: dict[str, dict[str, float]] = {
    "nabirds": {"scale_low": 0.85, "scale_high": 1.15, "offset": 0.1, "clutter": 0.7},
    "inat": {"scale_low": 0.6, "scale_high": 1.1, "offset": 0.22, "clutter": 1.0},
    "pretrain": {"scale_low": 0.6, "scale_high": 1.15, "offset": 0.22, "clutter": 1.0},
}
_HABITATS = np.array(
    [
        (0.55, 0.7, 0.9),  # sky
        (0.3, 0.5, 0.25),  # foliage
        (0.15, 0.3, 0.15),  # shade
        (0.45, 0.35, 0.25),  # bark
        (0.75, 0.7, 0.55),  # sand
        (0.62, 0.62, 0.6),  # overcast
    ]
)


def _rgb(c, shade: float = 1.0) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(v * shade * 255.0))) for v in c)


def _background(rng: np.random.Generator, size: int, clutter: float) -> Image.Image:
    """Gradient between two habitat colours, blotchy colour noise, branches and leaves."""
    top, bottom = (
        _HABITATS[rng.integers(len(_HABITATS), size=2)] + rng.normal(0, 0.06, (2, 3))
    ).clip(0, 1)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    img = top * (1 - ramp) + bottom * ramp  # (size, 1, 3)
    k = int(rng.integers(3, 9))
    # Mostly light and shade, a little colour: foliage blotches, not confetti.
    small = 0.65 * rng.random((k, k, 1)) + 0.35 * rng.random((k, k, 3))
    blotch = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    img = img + (np.asarray(blotch, np.float32) / 255.0 - 0.5) * (0.35 * clutter)
    canvas = Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.poisson(1.2 * clutter)):
        x0, x1 = rng.uniform(-0.2, 1.2, 2) * size
        y0, y1 = rng.uniform(0, 1, 2) * size
        tone = rng.uniform(0.2, 0.5)
        draw.line(
            [(x0, y0), (x1, y1)],
            fill=_rgb((tone, tone * 0.8, tone * 0.6)),
            width=int(rng.integers(2, max(3, size // 14))),
        )
    _leaves(draw, rng, size, rng.poisson(6 * clutter))
    return canvas


def _leaves(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int) -> None:
    for _ in range(n):
        cx, cy = rng.uniform(0, size, 2)
        w, h = rng.uniform(0.04, 0.12, 2) * size
        green = (rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.7), rng.uniform(0.05, 0.3))
        draw.ellipse([cx - w, cy - h, cx + w, cy + h], fill=_rgb(green))


class _Pose:
    """Bird coordinates (body centre at 0, body length 1, y down) -> canvas pixels."""

    def __init__(self, scale_px: float, angle_rad: float, flip: bool, x_px: float, y_px: float):
        c, s = np.cos(angle_rad) * scale_px, np.sin(angle_rad) * scale_px
        fx = -1.0 if flip else 1.0
        self.scale_px = scale_px
        self.m = np.array([[c * fx, -s], [s * fx, c]])
        self.t = np.array([x_px, y_px])

    def __call__(self, pts) -> list[tuple[float, float]]:
        xy = np.asarray(pts, float).reshape(-1, 2) @ self.m.T + self.t
        return [(float(x), float(y)) for x, y in xy]

    def ellipse(
        self, cx: float, cy: float, a: float, b: float, t0: float = 0.0, t1: float = 2 * np.pi
    ):
        t = np.linspace(t0, t1, 20)
        return self(np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1))

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.scale_px)))


def _draw_bird(
    d: ImageDraw.ImageDraw, v: VisualTraits, rng: np.random.Generator, pose: _Pose
) -> None:
    """The bird, facing +x before the pose, drawn as polygons straight onto the canvas."""
    a, b = 0.5, 0.5 / v.body_aspect
    # Legs and tail go first so the body covers their roots.
    leg = _rgb(v.beak_rgb, 0.6)
    for dx in (-0.1, 0.08):
        d.line(pose([(dx, 0.8 * b), (dx, b + 0.28)]), fill=leg, width=pose.width(0.02))
    tail_x, tail = -0.85 * a, v.tail_length
    d.polygon(
        pose(
            [
                (tail_x, -0.35 * b),
                (tail_x - tail, 0.1 * b - 0.15 * tail),
                (tail_x - tail, 0.45 * b),
                (tail_x, 0.3 * b),
            ]
        ),
        fill=_rgb(v.wing_rgb, 0.85),
    )
    d.polygon(pose.ellipse(0, 0, a, b), fill=_rgb(v.body_rgb))
    d.polygon(pose.ellipse(0.15 * a, 0.44 * b, 0.7 * a, 0.48 * b), fill=_rgb(v.belly_rgb))
    pat = _rgb(v.pattern_rgb)
    dot = 0.07 * 2 * b
    if v.pattern == "spotted":
        for _ in range(int(rng.integers(6, 14))):
            px, py = _in_ellipse(rng, 0.5 * a, 0.45 * b)
            d.polygon(pose.ellipse(0.15 * a + px, 0.45 * b + py, dot, dot), fill=pat)
    elif v.pattern == "streaked":
        for _ in range(int(rng.integers(5, 10))):
            px, py = _in_ellipse(rng, 0.5 * a, 0.35 * b)
            x, y = 0.15 * a + px, 0.4 * b + py
            d.line(
                pose([(x, y - 2 * dot), (x - 0.5 * dot, y + 2 * dot)]),
                fill=pat,
                width=pose.width(dot),
            )
    # Wing: an ellipse over the back; bars are chords across it.
    wx, wy, wa, wb = -0.15 * a, -0.1 * b, 0.6 * a, 0.55 * b
    d.polygon(pose.ellipse(wx, wy, wa, wb), fill=_rgb(v.wing_rgb))
    if v.pattern == "barred":
        for frac in np.linspace(-0.6, 0.6, int(rng.integers(3, 6))):
            half = wa * np.sqrt(1 - frac**2)
            d.line(
                pose([(wx - half, wy + frac * wb), (wx + half, wy + frac * wb)]),
                fill=pat,
                width=pose.width(dot),
            )
    r = v.head_ratio * b
    hx, hy = 0.85 * a, -0.75 * b
    d.polygon(pose.ellipse(hx, hy, r, r), fill=_rgb(v.head_rgb))
    if v.pattern == "capped":
        d.polygon(pose.ellipse(hx, hy, r, r, np.pi, 2 * np.pi), fill=pat)
    ex, ey, er = hx + 0.35 * r, hy - 0.15 * r, 0.18 * r
    if v.pattern == "masked":
        d.line(
            pose([(hx - 0.8 * r, ey), (hx + 0.95 * r, ey)]), fill=pat, width=pose.width(0.45 * r)
        )
    d.polygon(pose.ellipse(ex, ey, er, er), fill=(10, 10, 10))
    base = 0.5 * v.beak_depth * r
    tip = hx + r + v.beak_length * r
    d.polygon(
        pose(
            [
                (hx + 0.8 * r, ey + 0.15 * r - base),
                (tip, ey + 0.35 * r),
                (hx + 0.8 * r, ey + 0.15 * r + base),
            ]
        ),
        fill=_rgb(v.beak_rgb),
    )


def _in_ellipse(rng: np.random.Generator, a: float, b: float) -> tuple[float, float]:
    """A uniform point inside the axis-aligned ellipse of half-axes ``a``, ``b``."""
    rho, theta = np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    return a * rho * np.cos(theta), b * rho * np.sin(theta)


def render_photo(
    world: World, label: int, rng: np.random.Generator, style: str = "pretrain"
) -> np.ndarray:
    """One photo of species ``label``: (S, S, 3) uint8, S = ``world.config.image_size``."""
    cfg = world.config
    st = STYLES[style]
    big = 2 * cfg.image_size  # drawn at twice the size, then reduced: cheap anti-aliasing
    jit = cfg.photo_jitter
    clutter = cfg.clutter * st["clutter"]
    canvas = _background(rng, big, clutter)
    v = world.visual[label]
    # Body length in pixels: bigger species fill more of the frame.
    length_px = (
        0.5
        * big
        * (0.6 + 0.7 * v.size)
        * float(np.exp(jit * np.log(rng.uniform(st["scale_low"], st["scale_high"]))))
    )
    off = st["offset"] * jit * big
    pose = _Pose(
        length_px,
        float(np.deg2rad(rng.normal(0, 12 * jit))),
        bool(rng.random() < 0.5),
        big / 2 + rng.uniform(-off, off),
        big * 0.52 + rng.uniform(-off, off),
    )
    _draw_bird(ImageDraw.Draw(canvas), v, rng, pose)
    if rng.random() < 0.3 * clutter:
        _leaves(ImageDraw.Draw(canvas), rng, big, int(rng.integers(1, 3)))
    img = np.asarray(canvas.reduce(2), np.float32)
    gain = float(np.exp(rng.normal(0, 0.18 * jit)))
    cast = np.exp(rng.normal(0, 0.05 * jit, 3))
    img = img * (gain * cast) + rng.normal(0, 4.0 * jit, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
