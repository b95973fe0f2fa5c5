"""Anatomy of each region, drawn in the canonical (LEFT) orientation.

Every function paints one region's scene on a :class:`Canvas` and draws each
finding visibly. The canonical side is the patient's LEFT; the right-side class
is produced by mirroring the whole scene (see :mod:`.render`), so the two sides
are exact mirror geometries with identical colour distributions.

Conventions (image coordinates, u to the right, v down, FOV radius 1):
- nose, left cavity: septum (medial) on the image's RIGHT, inferior and middle
  turbinates (lateral) on the image's LEFT, dark airway between.
- ear, left ear: anterior is the image's LEFT; the malleus handle runs from the
  umbo up and towards anterior; the cone of light points antero-inferiorly
  (7 o'clock).
- larynx: epiglottis at the top, arytenoids at the bottom, vocal folds as a V
  (open) or meeting at the midline (closed).
- throat: soft palate and uvula at the top, tonsils on both sides, posterior
  pharyngeal wall behind, tongue base at the bottom.
"""

from __future__ import annotations

import math

import numpy as np

from entrep.data.synthetic.canvas import Canvas, band_points, ellipse_points


def _jit(rng: np.random.Generator, s: float) -> float:
    return float(rng.uniform(-s, s))


def _col(rng: np.random.Generator, base: tuple[float, float, float], s: float = 0.04) -> tuple[float, float, float]:
    """A colour near ``base`` (independent per-channel jitter)."""
    return tuple(float(np.clip(c + rng.uniform(-s, s), 0.0, 1.0)) for c in base)  # type: ignore[return-value]


def _mucosa(rng: np.random.Generator, pale: bool = False, congested: bool = False) -> tuple[float, float, float]:
    if pale:
        return _col(rng, (0.80, 0.64, 0.62), 0.03)
    if congested:
        return _col(rng, (0.80, 0.26, 0.24), 0.04)
    return _col(rng, (0.86, 0.45, 0.42), 0.05)


# ---------------------------------------------------------------- nose
def draw_nose(cv: Canvas, findings: set[str], rng: np.random.Generator) -> None:
    """Left nasal cavity: septum right, turbinates left, airway between."""
    pale = "pale mucosa" in findings
    congested = "congested mucosa" in findings
    muc = _mucosa(rng, pale, congested)
    deep = tuple(c * 0.35 for c in muc)
    cv.img[:] = np.asarray(deep, np.float32)
    cv.paint(cv.full(), deep, tex_amp=0.25)

    # dark airway towards the choana, between septum and turbinates
    air_c = (0.12 + _jit(rng, 0.08), -0.05 + _jit(rng, 0.1))
    cv.darken(cv.ellipse_mask(air_c, 0.32 + _jit(rng, 0.05), 0.75, blur=0.18), 0.12)
    # nasal floor at the bottom
    floor = cv.ellipse_mask((0.05, 1.25 + _jit(rng, 0.08)), 1.1, 0.45, blur=0.08)
    cv.paint(floor, tuple(c * 0.8 for c in muc), shade=cv.dome(floor, 0.2), tex_amp=0.15)

    # middle turbinate: higher, deeper (smaller, darker)
    mt_c = (-0.30 + _jit(rng, 0.07), -0.38 + _jit(rng, 0.08))
    mt_rx, mt_ry = 0.26 + _jit(rng, 0.04), 0.34 + _jit(rng, 0.05)
    mt = cv.ellipse_mask(mt_c, mt_rx, mt_ry, angle=0.25 + _jit(rng, 0.15), blur=0.02)
    cv.paint(mt, tuple(c * 0.78 for c in muc), shade=cv.dome(mt, 0.12))
    if "polyp of the middle turbinate" in findings:
        pc = (mt_c[0] + 0.14 + _jit(rng, 0.05), mt_c[1] + mt_ry + 0.05 + _jit(rng, 0.05))
        pts = ellipse_points(pc, 0.13 + _jit(rng, 0.03), 0.19 + _jit(rng, 0.03), angle=_jit(rng, 0.3),
                             wobble=0.06, rng=rng)
        pm = cv.polygon_mask(pts, blur=0.015)
        cv.paint(pm, _col(rng, (0.86, 0.80, 0.66), 0.03), shade=cv.dome(pm, 0.07), tex_amp=0.05)
        cv.speculars(pm, 3, 0.02)

    # inferior turbinate: large rounded mass low on the lateral (left) side
    hyper = "hypertrophy of the inferior turbinate" in findings
    it_c = (-0.55 + (0.2 if hyper else 0.0) + _jit(rng, 0.07), 0.35 + _jit(rng, 0.08))
    it_rx = (0.50 + _jit(rng, 0.05)) * (1.35 if hyper else 1.0)
    it_ry = (0.45 + _jit(rng, 0.05)) * (1.2 if hyper else 1.0)
    it = cv.ellipse_mask(it_c, it_rx, it_ry, angle=-0.3 + _jit(rng, 0.15), blur=0.02)
    it_col = tuple(min(1.0, c * (1.05 if hyper else 0.95)) for c in muc)
    cv.paint(it, it_col, shade=cv.dome(it, 0.18))

    # septum: the medial wall on the right, a bright smooth surface close to the scope
    edge = 0.22 + _jit(rng, 0.06)
    bulge = -0.22 if "deviated nasal septum" in findings else 0.0
    bv = _jit(rng, 0.25)
    ys = np.linspace(-1.4, 1.4, 15)
    edge_u = edge + 0.08 * np.sin(ys * 1.3 + _jit(rng, 1.0)) + bulge * np.exp(-((ys - bv) ** 2) / 0.25)
    pts = [(float(u), float(v)) for u, v in zip(edge_u, ys)] + [(1.4, 1.4), (1.4, -1.4)]
    sep = cv.polygon_mask(pts, blur=0.02)
    grad = np.clip(0.72 + 0.45 * (cv.u - edge), 0.65, 1.15) * np.ones_like(cv.v)
    sep_col = _col(rng, (0.94, 0.66, 0.62), 0.04) if not pale else _col(rng, (0.86, 0.74, 0.72), 0.03)
    if congested:
        sep_col = _col(rng, (0.86, 0.40, 0.36), 0.04)
    cv.paint(sep, sep_col, shade=grad * cv.dome(sep, 0.1) / 1.1, tex_amp=0.08)
    cv.vessels(sep, int(rng.integers(3, 8)))

    if "a spur on the septum" in findings:
        sv = _jit(rng, 0.35) + 0.15
        e = float(np.interp(sv, ys, edge_u))
        L = 0.28 + _jit(rng, 0.06)
        spur_pts = [(e + 0.12, sv - 0.09), (e - L, sv + _jit(rng, 0.04)), (e + 0.12, sv + 0.09)]
        sm = cv.polygon_mask(spur_pts, blur=0.012)
        cv.paint(sm, tuple(min(1.0, c * 1.08) for c in sep_col), shade=cv.dome(sm, 0.04), tex_amp=0.05)
        ridge = cv.line_mask([(e + 0.08, sv), (e - L * 0.85, sv)], 0.018, blur=0.006)
        cv.add_light(ridge, strength=0.4)

    if "purulent discharge" in findings:
        pus = _col(rng, (0.86, 0.80, 0.38), 0.04)
        for _ in range(int(rng.integers(2, 4))):
            start = (it_c[0] + it_rx * rng.uniform(0.3, 0.9), it_c[1] + _jit(rng, 0.3))
            pts = [start]
            for _ in range(5):
                pts.append((pts[-1][0] + _jit(rng, 0.06), pts[-1][1] + rng.uniform(0.05, 0.12)))
            cv.paint(cv.line_mask(pts, rng.uniform(0.04, 0.07), blur=0.01), pus, tex_amp=0.06)
        blob = cv.ellipse_mask((0.05 + _jit(rng, 0.1), 0.75 + _jit(rng, 0.1)), 0.14, 0.07, blur=0.02)
        cv.paint(blob, pus, shade=cv.dome(blob, 0.05), tex_amp=0.06)

    cv.vessels(it, int(rng.integers(2, 6)))
    cv.speculars(it * (cv.dome(it, 0.18) > 0.95), int(rng.integers(2, 6)))
    cv.speculars(sep * (cv.u > edge + 0.25), int(rng.integers(1, 4)), 0.02)


# ---------------------------------------------------------------- ear
def _clock(hour: float) -> tuple[float, float]:
    """Unit direction of a clock-face hour in image coordinates (12 up, 3 right)."""
    a = hour / 12 * 2 * math.pi
    return math.sin(a), -math.cos(a)


def draw_ear(cv: Canvas, findings: set[str], rng: np.random.Generator) -> None:
    """Left ear: canal skin around a pearly tympanic membrane; anterior on the left."""
    skin = _col(rng, (0.86, 0.60, 0.50), 0.04)
    cv.paint(cv.full(), skin, tex_amp=0.14)
    r2 = cv.u ** 2 + cv.v ** 2
    cv.img *= np.clip(1.1 - 0.25 * r2, 0.55, 1.1)[..., None]  # canal wall brighter near the scope
    cv.vessels(np.clip(r2 - 0.5, 0, 1), int(rng.integers(2, 6)), strength=0.25)

    c = (_jit(rng, 0.08), 0.04 + _jit(rng, 0.08))
    rx, ry = 0.60 + _jit(rng, 0.05), 0.68 + _jit(rng, 0.05)
    tilt = _jit(rng, 0.2)
    retracted = "retracted tympanic membrane" in findings
    # annulus (whitish rim) and membrane
    ann = cv.ellipse_mask(c, rx + 0.05, ry + 0.05, tilt, blur=0.02)
    cv.paint(ann, _col(rng, (0.88, 0.80, 0.74), 0.03), tex_amp=0.05)
    tm = cv.ellipse_mask(c, rx, ry, tilt, blur=0.015)
    tm_col = _col(rng, (0.74, 0.72, 0.73), 0.03)
    if retracted:
        tm_col = _col(rng, (0.66, 0.62, 0.62), 0.03)
    cv.paint(tm, tm_col, shade=0.85 + 0.2 * cv.dome(tm, 0.2) - 0.15 * (0.0 if not retracted else 1.0),
             tex_amp=0.05, fine_amp=0.02)

    sheen = cv.ellipse_mask((c[0] + _jit(rng, 0.15), c[1] - 0.2 + _jit(rng, 0.1)), rx * 0.6, ry * 0.45, blur=0.15) * tm
    cv.add_light(sheen, (0.93, 0.92, 0.95), rng.uniform(0.2, 0.4))
    umbo = (c[0] + _jit(rng, 0.03), c[1] + 0.06 + _jit(rng, 0.03))
    # malleus handle: from the umbo up and towards anterior (image left for a left ear)
    hour = 11.3 + _jit(rng, 0.25)  # a little left of 12 o'clock
    length = 0.5 + _jit(rng, 0.05)
    if retracted:
        hour, length = 10.3 + _jit(rng, 0.3), 0.36 + _jit(rng, 0.04)
    d = _clock(hour)
    top = (umbo[0] + d[0] * length, umbo[1] + d[1] * length)
    mal = cv.line_mask([umbo, top], 0.06 if not retracted else 0.075, blur=0.012)
    cv.paint(mal, _col(rng, (0.95, 0.90, 0.80), 0.02), tex_amp=0.03)
    lp = cv.circles_mask([top], [0.05 if not retracted else 0.07], blur=0.01)
    cv.paint(lp, (0.98, 0.95, 0.88), tex_amp=0.02)
    if retracted:  # shadows beside the prominent handle
        sh = cv.line_mask([(umbo[0] + 0.1, umbo[1]), (top[0] + 0.1, top[1])], 0.12, blur=0.06)
        cv.darken(sh * tm, 0.7)

    # cone of light: bright triangle from the umbo towards 7 o'clock (antero-inferior)
    if not retracted:
        vis = "the cone of light is visualized" in findings
        strength = rng.uniform(0.85, 1.0) if vis else rng.uniform(0.15, 0.35)
        h = 7.0 + _jit(rng, 0.3)
        half = math.radians(17 + _jit(rng, 4))
        r0, r1 = 0.09, min(rx, ry) * (0.85 + _jit(rng, 0.08))
        a0 = h / 12 * 2 * math.pi
        pts = [(umbo[0] + r0 * math.sin(a0), umbo[1] - r0 * math.cos(a0))]
        for a in (a0 - half, a0 + half):
            pts.append((umbo[0] + r1 * math.sin(a), umbo[1] - r1 * math.cos(a)))
        cone = cv.polygon_mask(pts, blur=0.015) * tm
        cv.add_light(cone, (1.0, 0.99, 0.95), strength)

    if "perforation of the tympanic membrane" in findings:
        # a dark hole in one quadrant (posterior = right, anterior = left for a left ear)
        hour = float(rng.choice([4.5, 7.5, 5.5, 2.0])) + _jit(rng, 0.5)
        dist = rng.uniform(0.25, 0.4)
        dd = _clock(hour)
        pc = (c[0] + dd[0] * dist * rx / 0.6, c[1] + dd[1] * dist * ry / 0.68)
        pr = rng.uniform(0.12, 0.22)
        pts = ellipse_points(pc, pr, pr * rng.uniform(0.8, 1.2), _jit(rng, 1.0), wobble=0.12, rng=rng)
        rim = cv.polygon_mask(ellipse_points(pc, pr * 1.15, pr * 1.15), blur=0.02) * tm
        cv.paint(rim, (0.93, 0.86, 0.82), tex_amp=0.04)
        hole = cv.polygon_mask(pts, blur=0.012)
        cv.paint(hole, _col(rng, (0.30, 0.10, 0.08), 0.03), shade=1.4 - cv.dome(hole, 0.08) * 0.8, tex_amp=0.3)

    if "earwax in the canal" in findings:
        wax = _col(rng, (0.55, 0.36, 0.12), 0.05)
        for _ in range(int(rng.integers(1, 4))):
            ang = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(0.78, 1.0)
            wc = (dist * math.cos(ang), dist * math.sin(ang))
            r = rng.uniform(0.12, 0.25)
            wm = cv.polygon_mask(ellipse_points(wc, r, r * rng.uniform(0.6, 1.0), ang, wobble=0.15, rng=rng),
                                 blur=0.015)
            cv.paint(wm, wax, shade=cv.dome(wm, 0.06), tex_amp=0.3)
            cv.speculars(wm, 1, 0.015)
    cv.speculars(tm, int(rng.integers(0, 2)), 0.02)


# ---------------------------------------------------------------- larynx
def draw_larynx(cv: Canvas, findings: set[str], rng: np.random.Generator, *, open_glottis: bool) -> None:
    """Larynx from above: epiglottis top, folds as a V (open) or closed at the midline."""
    muc = _mucosa(rng)
    cv.img[:] = np.asarray(tuple(c * 0.3 for c in muc), np.float32)
    base = cv.ellipse_mask((0, 0.1), 1.25, 1.2, blur=0.15)
    cv.paint(base, tuple(c * 0.8 for c in muc), shade=cv.dome(base, 0.4), tex_amp=0.2)
    # piriform sinuses, dark, on both sides
    for s in (-1, 1):
        cv.darken(cv.ellipse_mask((s * (0.72 + _jit(rng, 0.05)), 0.35 + _jit(rng, 0.06)), 0.16, 0.32,
                                  s * 0.3, blur=0.08), 0.2)
    # laryngeal inlet (dark) framed by aryepiglottic folds
    inlet = cv.ellipse_mask((0, 0.08), 0.5, 0.62, blur=0.06)
    cv.darken(inlet, 0.25)

    ant = (_jit(rng, 0.03), -0.42 + _jit(rng, 0.04))
    spread = rng.uniform(0.2, 0.34) if open_glottis else rng.uniform(0.0, 0.025)
    post_v = 0.42 + _jit(rng, 0.04)
    posts = [(ant[0] - spread, post_v), (ant[0] + spread, post_v)]
    # ventricular (false) folds lateral to the true folds
    for p in posts:
        s = -1 if p[0] < ant[0] else 1
        fm = cv.polygon_mask(band_points((ant[0] + s * 0.06, ant[1] + 0.02), (p[0] + s * 0.16, p[1] - 0.02),
                                         0.08, 0.16), blur=0.03)
        cv.paint(fm, tuple(c * 0.92 for c in muc), shade=cv.dome(fm, 0.06))
    # glottis
    if open_glottis:
        gl = cv.polygon_mask([ant, posts[0], (ant[0], post_v + 0.06), posts[1]], blur=0.012)
        cv.paint(gl, (0.03, 0.01, 0.01), tex_amp=0.4)
        ring = cv.ellipse_mask((ant[0], post_v - 0.15), spread * 0.55, 0.12, blur=0.05) * gl
        cv.paint(ring, tuple(c * 0.25 for c in muc), tex_amp=0.3)  # tracheal rings far below
    # true vocal folds: white bands
    edema = "edema of the vocal folds" in findings
    fold_col = _col(rng, (0.93, 0.89, 0.84), 0.02)
    if edema:
        fold_col = _col(rng, (0.92, 0.74, 0.68), 0.03)
    wa, wb = (0.05, 0.09) if not edema else (0.09, 0.16)
    for p in posts:
        s = -1 if p[0] < ant[0] else 1
        pts = band_points((ant[0] + s * wa / 2, ant[1]), (p[0] + s * wb / 2, p[1]), wa, wb)
        fm = cv.polygon_mask(pts, blur=0.01)
        cv.paint(fm, fold_col, shade=cv.dome(fm, 0.03), tex_amp=0.04)
        cv.vessels(fm, 1, strength=0.15)
        if "vocal fold nodule" in findings:
            t = 0.33 + _jit(rng, 0.05)
            nc = (ant[0] + (p[0] - ant[0]) * t - s * 0.01, ant[1] + (p[1] - ant[1]) * t)
            nm = cv.circles_mask([nc], [rng.uniform(0.035, 0.05)], blur=0.008)
            cv.paint(nm, (0.98, 0.96, 0.92), shade=cv.dome(nm, 0.02), tex_amp=0.03)
            cv.speculars(nm, 1, 0.012)

    # arytenoids at the posterior ends, posterior commissure between them
    ery = ("erythema of the arytenoid cartilages" in findings
           or "edema and erythema of the arytenoid cartilages" in findings)
    big = "edema and erythema of the arytenoid cartilages" in findings
    ary_col = _col(rng, (0.84, 0.22, 0.20), 0.04) if ery else tuple(min(1.0, c * 1.02) for c in muc)
    ar = (0.13 + _jit(rng, 0.02)) * (1.45 if big else 1.0)
    if "posterior commissure hypertrophy" in findings:
        pcm = cv.ellipse_mask((ant[0], post_v + 0.16), 0.2 + spread * 0.5, 0.11, blur=0.02)
        cv.paint(pcm, _col(rng, (0.9, 0.72, 0.66), 0.03), shade=cv.dome(pcm, 0.05), tex_amp=0.3)
        bumps = [(ant[0] + rng.uniform(-0.18, 0.18), post_v + 0.12 + rng.uniform(-0.05, 0.06)) for _ in range(7)]
        bm = cv.circles_mask(bumps, list(rng.uniform(0.02, 0.04, size=7)), blur=0.008) * pcm
        cv.paint(bm, (0.96, 0.86, 0.80), shade=cv.dome(bm, 0.015), tex_amp=0.05)
    for p in posts:
        s = -1 if p[0] < ant[0] else 1
        am = cv.ellipse_mask((p[0] + s * (0.08 + ar * 0.4), p[1] + 0.12), ar, ar * 1.15, blur=0.02)
        cv.paint(am, ary_col, shade=cv.dome(am, 0.08))
        cv.speculars(am, int(rng.integers(0, 2)), 0.018)

    # epiglottis: a pale curved crescent at the top
    ec = (_jit(rng, 0.05), -0.78 + _jit(rng, 0.06))
    outer = cv.ellipse_mask(ec, 0.62 + _jit(rng, 0.05), 0.34, blur=0.02)
    inner = cv.ellipse_mask((ec[0], ec[1] - 0.14), 0.5, 0.3, blur=0.03)
    ep = np.clip(outer - inner, 0, 1) * (cv.v > ec[1] - 0.5)
    cv.paint(ep, _col(rng, (0.92, 0.66, 0.60), 0.03), shade=cv.dome(ep, 0.06), tex_amp=0.08)
    cv.vessels(ep, int(rng.integers(1, 4)))
    cv.speculars(ep, int(rng.integers(1, 3)), 0.02)


# ---------------------------------------------------------------- throat
def draw_throat(cv: Canvas, findings: set[str], rng: np.random.Generator) -> None:
    """Oropharynx: palate and uvula top, tonsils both sides, posterior wall, tongue base."""
    muc = _mucosa(rng)
    cv.img[:] = np.asarray((0.08, 0.02, 0.02), np.float32)
    # posterior pharyngeal wall
    ery = "erythema of the posterior pharyngeal wall" in findings
    wall_col = _col(rng, (0.78, 0.28, 0.24), 0.04) if ery else tuple(c * 0.92 for c in muc)
    wc = (_jit(rng, 0.05), 0.0 + _jit(rng, 0.06))
    wall = cv.ellipse_mask(wc, 0.62, 0.75, blur=0.12)
    cv.paint(wall, wall_col, shade=0.75 + 0.25 * cv.dome(wall, 0.2), tex_amp=0.18)
    cv.vessels(wall, int(rng.integers(3, 7)), strength=0.3)
    if "granular posterior pharyngeal wall" in findings:
        n = int(rng.integers(10, 18))
        cs = [(wc[0] + rng.uniform(-0.4, 0.4), wc[1] + rng.uniform(-0.25, 0.45)) for _ in range(n)]
        gm = cv.circles_mask(cs, list(rng.uniform(0.025, 0.05, size=n)), blur=0.008)
        cv.paint(gm, _col(rng, (0.93, 0.55, 0.50), 0.03), shade=cv.dome(gm, 0.02), tex_amp=0.05)
        cv.speculars(gm, n // 3, 0.01)

    # tonsils on both sides, with crypts
    hyper = "tonsillar hypertrophy" in findings
    t_col = _col(rng, (0.84, 0.40, 0.36), 0.04)
    for s in (-1, 1):
        tc = (s * ((0.40 if hyper else 0.58) + _jit(rng, 0.04)), 0.18 + _jit(rng, 0.06))
        trx, tr_y = (0.32 if hyper else 0.2) + _jit(rng, 0.03), (0.38 if hyper else 0.28) + _jit(rng, 0.03)
        tm = cv.polygon_mask(ellipse_points(tc, trx, tr_y, s * 0.2, wobble=0.05, rng=rng), blur=0.015)
        cv.paint(tm, t_col, shade=cv.dome(tm, 0.1), tex_amp=0.25)
        n = int(rng.integers(4, 8))
        cr = [(tc[0] + rng.uniform(-0.6, 0.6) * trx, tc[1] + rng.uniform(-0.6, 0.6) * tr_y) for _ in range(n)]
        cv.darken(cv.circles_mask(cr, list(rng.uniform(0.012, 0.025, size=n)), blur=0.006) * tm, 0.45)
        if "exudate on the tonsils" in findings:
            k = int(rng.integers(3, 7))
            ex = [(tc[0] + rng.uniform(-0.55, 0.55) * trx, tc[1] + rng.uniform(-0.55, 0.55) * tr_y) for _ in range(k)]
            em = cv.circles_mask(ex, list(rng.uniform(0.02, 0.045, size=k)), blur=0.01) * tm
            cv.paint(em, _col(rng, (0.95, 0.93, 0.78), 0.02), tex_amp=0.05)
        cv.speculars(tm, int(rng.integers(1, 3)), 0.018)
        # palatine arch (anterior pillar) in front of the tonsil
        pil = cv.polygon_mask(band_points((s * 0.4, -0.35), (s * (0.95 if not hyper else 0.85), 0.75), 0.12, 0.22),
                              blur=0.03)
        cv.paint(pil, tuple(min(1.0, c * 1.02) for c in muc), shade=cv.dome(pil, 0.06))

    # soft palate: an arch across the top (lowest at the sides), the uvula hanging in the middle
    pal_v = -0.55 + _jit(rng, 0.05)
    curv = 0.45 + _jit(rng, 0.08)
    us = np.linspace(-1.4, 1.4, 29)
    arch = [(float(u), float(pal_v + curv * u * u)) for u in us]
    pal = cv.polygon_mask(arch + [(1.4, -1.4), (-1.4, -1.4)], blur=0.03)
    pal_col = tuple(min(1.0, c * 1.04) for c in muc)
    cv.paint(pal, pal_col, shade=0.8 + 0.3 * np.clip(pal_v - cv.v + 0.6, 0, 1), tex_amp=0.1)
    cv.vessels(pal, int(rng.integers(2, 5)))
    ut = (_jit(rng, 0.03), pal_v - 0.05)
    ub = (ut[0] + _jit(rng, 0.06), pal_v + 0.42 + _jit(rng, 0.06))
    uv = cv.polygon_mask(band_points(ut, ub, 0.24, 0.13), blur=0.012)
    uv = np.maximum(uv, cv.circles_mask([ub], [0.08], blur=0.012))
    cv.paint(uv, tuple(min(1.0, c * 1.08) for c in pal_col), shade=cv.dome(uv, 0.05), tex_amp=0.08)
    cv.speculars(uv, 1, 0.015)

    # tongue base, large mound at the bottom
    tg = cv.ellipse_mask((_jit(rng, 0.06), 1.1 + _jit(rng, 0.08)), 1.15, 0.52, blur=0.03)
    cv.paint(tg, _col(rng, (0.90, 0.58, 0.55), 0.04), shade=cv.dome(tg, 0.2), tex_amp=0.15, fine_amp=0.06)
    cv.speculars(tg, int(rng.integers(1, 4)), 0.02)
