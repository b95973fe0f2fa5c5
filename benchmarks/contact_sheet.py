"""Contact sheet of synthetic images, one row per class, for eyeballing the renderer.

    python benchmarks/contact_sheet.py /tmp/sheet.png [--per-class 6] [--seed 0]

Each tile is labelled with its class and findings. Not committed output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

from entrep.data.synthetic import render_image, sample_findings
from entrep.data.synthetic.findings import CLASS_REGION
from entrep.taxonomy import ENT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=256, help="tile width in pixels")
    ap.add_argument("--classes", default=",".join(ENT.classes))
    args = ap.parse_args()
    classes = args.classes.split(",")
    tw, th = args.tile, args.tile * 3 // 4
    sheet = Image.new("RGB", (tw * args.per_class, (th + 24) * len(classes)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    t0 = time.perf_counter()
    for r, label in enumerate(classes):
        for c in range(args.per_class):
            rng = np.random.default_rng([args.seed, r, c])
            findings = sample_findings(CLASS_REGION[label][0], rng)
            img = Image.fromarray(render_image(label, findings, rng)).resize((tw, th), Image.BILINEAR)
            x, y = c * tw, r * (th + 24)
            sheet.paste(img, (x, y))
            draw.text((x + 3, y + th + 1), label, fill=(255, 255, 0))
            draw.text((x + 3, y + th + 11), "; ".join(findings)[: tw // 6], fill=(230, 230, 230))
    n = len(classes) * args.per_class
    print(f"{n} images in {time.perf_counter() - t0:.2f} s")
    sheet.save(args.out)


if __name__ == "__main__":
    main()
