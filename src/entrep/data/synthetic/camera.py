"""The endoscope camera: field of view, pose, optics and illumination nuisance.

A :class:`Nuisance` holds everything about an image that is NOT anatomy:
where the circular field of view sits and how big it is, rotation and zoom,
blur, white balance, gamma, saturation, vignetting, an illumination gradient
and sensor noise. :func:`sample_nuisance` draws it from one distribution for
every class - in particular the gradient direction is uniform on the circle and
independent of side - so laterality can only be read from the anatomy's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from entrep.data.synthetic.canvas import EXTENT

WIDTH, HEIGHT = 640, 480


@dataclass(frozen=True)
class Nuisance:
    """Camera and illumination parameters of one image (pixels, degrees, factors)."""

    cx: float = WIDTH / 2
    cy: float = HEIGHT / 2
    radius: float = 215.0
    rotation: float = 0.0
    zoom: float = 1.0
    blur: float = 0.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    gamma: float = 1.0
    saturation: float = 1.0
    vignette: float = 0.0
    light_dx: float = 0.0
    light_dy: float = 0.0
    gradient: float = 0.0
    gradient_angle: float = 0.0
    noise: float = 0.0
    edge: float = 1.5

    @classmethod
    def neutral(cls) -> "Nuisance":
        """Centred, upright, no blur, no colour or lighting change, no noise."""
        return cls()


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    """Draw the nuisance of one image; the same distribution for every class and side."""
    return Nuisance(
        cx=WIDTH / 2 + rng.uniform(-45, 45),
        cy=HEIGHT / 2 + rng.uniform(-28, 28),
        radius=rng.uniform(185, 245),
        rotation=rng.uniform(-15, 15),
        zoom=rng.uniform(0.85, 1.2),
        blur=rng.uniform(0.0, 1.8),
        gains=tuple(float(g) for g in np.exp(rng.normal(0.0, 0.04, size=3))),  # type: ignore[arg-type]
        brightness=float(np.exp(rng.normal(0.0, 0.18))),
        gamma=rng.uniform(0.8, 1.25),
        saturation=rng.uniform(0.75, 1.25),
        vignette=rng.uniform(0.15, 0.6),
        light_dx=rng.uniform(-0.3, 0.3),
        light_dy=rng.uniform(-0.3, 0.3),
        gradient=rng.uniform(0.0, 0.35),
        gradient_angle=rng.uniform(0.0, 2 * math.pi),
        noise=rng.uniform(0.004, 0.02),
        edge=rng.uniform(1.0, 3.0),
    )


def _luts(nz: Nuisance) -> list[int]:
    x = np.arange(256, dtype=np.float64) / 255.0
    out: list[int] = []
    for g in nz.gains:
        y = np.clip(x * g * nz.brightness, 0, 1) ** nz.gamma
        out.extend(np.clip(np.rint(y * 255.0), 0, 255).astype(int).tolist())
    return out


def _illumination(nz: Nuisance, step: int = 8) -> np.ndarray:
    """Smooth lighting field (vignette around a shifted light centre + linear gradient), (H, W) float32.

    Computed on a coarse grid and upsampled: it has no detail to lose.
    """
    h, w = HEIGHT // step + 1, WIDTH // step + 1
    xs = np.arange(w, dtype=np.float32)[None, :] * step - nz.cx
    ys = np.arange(h, dtype=np.float32)[:, None] * step - nz.cy
    light = np.ones((h, w), np.float32)
    if nz.vignette > 0:
        lx, ly = nz.light_dx * nz.radius, nz.light_dy * nz.radius
        light = light - nz.vignette * ((xs - lx) ** 2 + (ys - ly) ** 2) / (nz.radius ** 2)
    if nz.gradient > 0:
        light = light + nz.gradient * (xs * math.cos(nz.gradient_angle) + ys * math.sin(nz.gradient_angle)) / nz.radius
    light = np.clip(light, 0.15, 1.6).astype(np.float32)
    # grid point j sits at pixel coordinate j*step; PIL maps pixel centres, so resize a 1-cell-larger grid and crop
    big = Image.fromarray(light, "F").resize((w * step, h * step), Image.BILINEAR)
    off = step // 2
    return np.array(big.crop((off, off, off + WIDTH, off + HEIGHT)), np.float32)


def photograph(scene: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Turn a scene (S, S, 3 float in 0..1, units per :mod:`.canvas`) into a 480x640x3 uint8 frame.

    Output pixels outside the circular field of view are exactly 0.
    """
    size = scene.shape[0]
    # output pixel -> scene pixel: undo translation, rotation and zoom (radius 1 unit = nz.radius px)
    k = size / (2 * EXTENT) / (nz.radius * nz.zoom)
    th = math.radians(nz.rotation)
    ct, st = math.cos(th), math.sin(th)
    a, b = k * ct, k * st
    d, e = -k * st, k * ct
    c = size / 2 - a * nz.cx - b * nz.cy
    f = size / 2 - d * nz.cx - e * nz.cy
    src = Image.fromarray((scene * 255.0 + 0.5).astype(np.uint8), "RGB")
    # colour response (white balance, exposure, gamma, saturation): per-pixel maps, so done on the small scene
    if nz.gains != (1.0, 1.0, 1.0) or nz.brightness != 1.0 or nz.gamma != 1.0:
        src = src.point(_luts(nz))
    if abs(nz.saturation - 1.0) > 1e-6:
        src = ImageEnhance.Color(src).enhance(nz.saturation)
    if nz.blur * k > 0.3:  # optical blur, applied in scene pixels (cheaper; the map is a similarity)
        src = src.filter(ImageFilter.GaussianBlur(nz.blur * k))
    im = src.transform((WIDTH, HEIGHT), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    arr = np.asarray(im, np.float32)
    light = _illumination(nz)
    xs = np.arange(WIDTH, dtype=np.float32)[None, :] + 0.5 - nz.cx  # pixel centres
    ys = np.arange(HEIGHT, dtype=np.float32)[:, None] + 0.5 - nz.cy
    fov = np.sqrt(xs * xs + ys * ys)
    fov = np.clip((nz.radius + 0.5 * nz.edge - fov) * (1.0 / nz.edge), 0.0, 1.0, out=fov)
    light *= fov
    arr *= light[..., None]
    if nz.noise > 0:  # sensor noise, mostly luminance, only inside the field of view
        grain = rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32)
        grain *= (nz.noise * 255.0) * (fov > 0)
        arr += grain[..., None]
    np.clip(arr, 0.0, 255.0, out=arr)
    im = Image.fromarray((arr + 0.5).astype(np.uint8), "RGB")
    return np.asarray(im, np.uint8)
