"""A small painter's canvas for procedural anatomy, in scene units.

Anatomy is drawn in a square *scene* whose coordinates are units: (0, 0) is
the centre of the endoscope's field of view and radius 1 is its edge; the
scene spans ``[-EXTENT, EXTENT]`` so the camera can rotate and zoom without
running off it. u grows to the image's right, v downwards.

Shapes are rasterised with PIL (fast, anti-aliased through a blur) and
composited with numpy in float32: ``img = img * (1 - a) + colour * shade * a``
where ``shade`` gives rounded masses a lit dome and a darker rim. All
randomness comes from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Scene side in pixels (~100 px per unit; the camera upsamples ~2x, then blurs).
SCENE_PX = 256
#: Half-width of the scene in units (covers rotation and zoom-out of the camera).
EXTENT = 1.3

Point = tuple[float, float]


def fractal_noise(rng: np.random.Generator, size: int, *, base: int = 4, octaves: int = 5,
                  persistence: float = 0.55) -> np.ndarray:
    """Zero-mean, unit-variance fractal ("perlin-ish") noise, shape (size, size), float32.

    Octaves are Gaussian grids of ``base * 2**k`` cells, each upsampled
    bilinearly to the finest grid and summed with weight ``persistence**k``;
    the sum is upsampled bicubically to ``size``. Vectorised, about 1 ms.
    """
    top = base * 2 ** (octaves - 1)
    acc = np.zeros((top, top), np.float32)
    amp = 1.0
    for k in range(octaves):
        g = base * 2 ** k
        grid = rng.standard_normal((g, g), dtype=np.float32)
        if g != top:
            grid = np.asarray(Image.fromarray(grid, "F").resize((top, top), Image.BILINEAR), np.float32)
        acc += amp * grid
        amp *= persistence
    out = np.asarray(Image.fromarray(acc, "F").resize((size, size), Image.BICUBIC), np.float32)
    out = out - out.mean()
    out *= 1.0 / (out.std() + 1e-6)
    return out


def _bbox(alpha: np.ndarray, pad: int = 1) -> tuple[slice, slice] | None:
    """Row and column slices holding every non-zero pixel of ``alpha`` (None if empty)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha[rows[0]:rows[-1] + 1].any(axis=0))
    n, m = alpha.shape
    return (slice(max(0, rows[0] - pad), min(n, rows[-1] + 1 + pad)),
            slice(max(0, cols[0] - pad), min(m, cols[-1] + 1 + pad)))


class Canvas:
    """An RGB float32 scene plus a shared tissue texture.

    ``texture`` (fractal noise) modulates every painted tissue so that the
    mucosa looks continuous. Painting works on the bounding box of each mask,
    which keeps a frame to a few tens of milliseconds.
    """

    def __init__(self, rng: np.random.Generator, size: int = SCENE_PX):
        self.rng = rng
        self.size = size
        self.scale = size / (2 * EXTENT)
        self.img = np.zeros((size, size, 3), np.float32)
        self.texture = fractal_noise(rng, size, base=4, octaves=5)
        self.fine = fractal_noise(rng, size, base=max(4, size // 8), octaves=2, persistence=0.8)
        ax = (np.arange(size, dtype=np.float32) + 0.5) / self.scale - EXTENT
        self.u = ax[None, :]
        self.v = ax[:, None]

    # ---- coordinates ---------------------------------------------------
    def px(self, p: Point) -> tuple[float, float]:
        return ((p[0] + EXTENT) * self.scale, (p[1] + EXTENT) * self.scale)

    def _pts(self, pts: Sequence[Point]) -> list[tuple[float, float]]:
        return [self.px(p) for p in pts]

    def full(self) -> np.ndarray:
        """A mask covering the whole scene."""
        return np.ones((self.size, self.size), np.float32)

    # ---- masks -----------------------------------------------------------
    def _blur(self, im: Image.Image, blur: float) -> np.ndarray:
        r = blur * self.scale
        if r >= 0.35:
            im = im.filter(ImageFilter.GaussianBlur(r))
        return np.asarray(im, np.float32) * (1.0 / 255.0)

    def polygon_mask(self, pts: Sequence[Point], blur: float = 0.01) -> np.ndarray:
        im = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(im).polygon(self._pts(pts), fill=255)
        return self._blur(im, blur)

    def ellipse_mask(self, c: Point, rx: float, ry: float, angle: float = 0.0, blur: float = 0.01) -> np.ndarray:
        return self.polygon_mask(ellipse_points(c, rx, ry, angle), blur)

    def line_mask(self, pts: Sequence[Point], width: float, blur: float = 0.008) -> np.ndarray:
        im = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(im).line(self._pts(pts), fill=255, width=max(1, int(round(width * self.scale))), joint="curve")
        return self._blur(im, blur)

    def circles_mask(self, centres: Sequence[Point], radii: Sequence[float], blur: float = 0.008) -> np.ndarray:
        im = Image.new("L", (self.size, self.size), 0)
        d = ImageDraw.Draw(im)
        for (cu, cv), r in zip(centres, radii):
            x, y = self.px((cu, cv))
            rp = max(r * self.scale, 0.6)
            d.ellipse((x - rp, y - rp, x + rp, y + rp), fill=255)
        return self._blur(im, blur)

    def dome(self, mask: np.ndarray, softness: float) -> np.ndarray:
        """Lit-dome shading for a rounded mass: ~1 in its middle, darker at its rim.

        Computed at quarter resolution (a wide blur needs no detail).
        """
        q = max(8, self.size // 4)
        im = Image.fromarray((mask * 255).astype(np.uint8), "L").resize((q, q), Image.BILINEAR)
        im = im.filter(ImageFilter.GaussianBlur(max(0.5, softness * self.scale * q / self.size)))
        d = np.asarray(im.resize((self.size, self.size), Image.BILINEAR), np.float32) * (1.0 / 255.0)
        m = float(d.max()) or 1.0
        return 0.3 + 0.75 * np.clip(d * (1.0 / m), 0.0, 1.0) ** 0.8

    # ---- painting ----------------------------------------------------
    def paint(self, alpha: np.ndarray, colour: Sequence[float], *, shade: np.ndarray | float = 1.0,
              tex_amp: float = 0.12, fine_amp: float = 0.04) -> None:
        """Composite ``colour`` (RGB in 0..1) through ``alpha`` with shading and tissue texture."""
        box = _bbox(alpha)
        if box is None:
            return
        a = alpha[box][..., None]
        mod = 1.0 + tex_amp * self.texture[box] + fine_amp * self.fine[box]
        if np.isscalar(shade):
            mod *= float(shade)
        else:
            mod *= np.broadcast_to(shade, alpha.shape)[box]
        col = np.asarray(colour, np.float32) * mod[..., None]
        view = self.img[box]
        view += a * (col - view)

    def tint(self, alpha: np.ndarray, colour: Sequence[float], strength: float) -> None:
        """Blend the existing scene towards ``colour`` (keeps texture and shading)."""
        box = _bbox(alpha)
        if box is None:
            return
        a = (alpha[box] * strength)[..., None]
        view = self.img[box]
        lum = view.mean(axis=2, keepdims=True)
        target = np.asarray(colour, np.float32) * (lum / (np.mean(colour) + 1e-6))
        view += a * (target - view)

    def darken(self, alpha: np.ndarray, factor: float) -> None:
        box = _bbox(alpha)
        if box is None:
            return
        self.img[box] *= (1.0 - alpha[box] * (1.0 - factor))[..., None]

    def add_light(self, alpha: np.ndarray, colour: Sequence[float] = (1.0, 0.98, 0.95), strength: float = 1.0) -> None:
        """Blend towards a bright colour (reflections, the cone of light)."""
        box = _bbox(alpha)
        if box is None:
            return
        a = (alpha[box] * strength)[..., None]
        view = self.img[box]
        view += a * (np.asarray(colour, np.float32) - view)

    def vessels(self, region: np.ndarray, n: int, colour: Sequence[float] = (0.45, 0.08, 0.08),
                strength: float = 0.35) -> None:
        """Thin branching capillaries (random walks) restricted to ``region``."""
        rng = self.rng
        im = Image.new("L", (self.size, self.size), 0)
        d = ImageDraw.Draw(im)
        for _ in range(n):
            p = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)])
            ang = rng.uniform(0, 2 * math.pi)
            pts = [tuple(p)]
            for _ in range(int(rng.integers(5, 12))):
                ang += rng.normal(0, 0.5)
                p = p + 0.06 * np.array([math.cos(ang), math.sin(ang)])
                pts.append(tuple(p))
            d.line(self._pts(pts), fill=int(rng.integers(120, 255)), width=1)
        a = np.asarray(im, np.float32) * (1.0 / 255.0) * region
        self.tint(a, colour, strength)

    def speculars(self, region: np.ndarray, n: int, size: float = 0.025) -> None:
        """Small specular reflections (wet mucosa) at random spots of ``region``."""
        if n <= 0:
            return
        rng = self.rng
        ys, xs = np.nonzero(region > 0.6)
        if len(xs) == 0:
            return
        idx = rng.integers(0, len(xs), size=n)
        centres = [((xs[i] + 0.5) / self.scale - EXTENT, (ys[i] + 0.5) / self.scale - EXTENT) for i in idx]
        radii = [size * rng.uniform(0.4, 1.3) for _ in idx]
        core = self.circles_mask(centres, radii, blur=size * 0.25)
        halo = self.circles_mask(centres, [r * 2.2 for r in radii], blur=size * 0.8)
        self.add_light(np.clip(0.3 * halo + 0.9 * core, 0, 1))

    def finish(self) -> np.ndarray:
        return np.clip(self.img, 0.0, 1.0)


def ellipse_points(c: Point, rx: float, ry: float, angle: float = 0.0, n: int = 48,
                   wobble: float = 0.0, rng: np.random.Generator | None = None) -> list[Point]:
    """Polygon of a rotated ellipse (angle in radians); ``wobble`` makes it irregular."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    if wobble and rng is not None:
        k = rng.standard_normal(4)
        r = 1.0 + wobble * (k[0] * np.sin(2 * t + k[1]) + 0.5 * k[2] * np.sin(3 * t + k[3]))
    x = rx * r * np.cos(t)
    y = ry * r * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(c[0] + ca * a - sa * b, c[1] + sa * a + ca * b) for a, b in zip(x, y)]


def band_points(a: Point, b: Point, wa: float, wb: float) -> list[Point]:
    """A quadrilateral band from ``a`` (width ``wa``) to ``b`` (width ``wb``)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    L = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / L, dx / L
    return [(a[0] + nx * wa / 2, a[1] + ny * wa / 2), (b[0] + nx * wb / 2, b[1] + ny * wb / 2),
            (b[0] - nx * wb / 2, b[1] - ny * wb / 2), (a[0] - nx * wa / 2, a[1] - ny * wa / 2)]
