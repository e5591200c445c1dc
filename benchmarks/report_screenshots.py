"""Screenshots of report pages in a real headless browser (Debian's ``chromium``), at 900 and 1400 px.

For each report folder given (made with ``circuitalg report MODEL --out DIR``, or
``benchmarks/bench_report.py --keep DIR``), renders ``DIR/report.html`` with
``chromium --headless --screenshot`` at each width, tall enough for the whole page (the height
is measured with ``--dump-dom`` is not needed: the page is rendered at a fixed tall height and
trimmed of trailing white rows), and writes ``DIR/screenshot-{width}.png`` plus one PNG per
section-sized slice (``DIR/screenshot-{width}-{i}.png``) for reading.

Usage: ``python benchmarks/report_screenshots.py DIR [DIR ...] [--widths 900 1400] [--height 16000]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np


def shoot(report: Path, width: int, height: int) -> list[Path]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no chromium found: apt-get install chromium")
    out = report.parent / f"screenshot-{width}.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out}", report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    im = Image.open(out).convert("RGB")
    a = np.asarray(im)
    content = np.flatnonzero((a < 250).any(axis=(1, 2)))
    bottom = int(content[-1]) + 20 if content.size else a.shape[0]
    im = im.crop((0, 0, width, min(bottom, a.shape[0])))
    im.save(out)
    parts = []
    for i, top in enumerate(range(0, im.size[1], 1600)):
        p = report.parent / f"screenshot-{width}-{i}.png"
        im.crop((0, top, width, min(top + 1600, im.size[1]))).save(p)
        parts.append(p)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--widths", nargs="+", type=int, default=[900, 1400])
    ap.add_argument("--height", type=int, default=16000)
    args = ap.parse_args()
    for d in args.dirs:
        for w in args.widths:
            parts = shoot(d / "report.html", w, args.height)
            print(f"{d}: {w} px -> {d / f'screenshot-{w}.png'} ({len(parts)} slices)")


if __name__ == "__main__":
    main()
