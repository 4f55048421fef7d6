"""Writing a picture the CLI drew (`history --plot`, `fleet-activate --plot`): SVG as it is,
PNG rendered by a local headless Chromium (the one the UI tests use), nothing else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from kristal.errors import InternalError, UsageInvalid

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]


def write_picture(path: Path, svg: str) -> None:
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise UsageInvalid(f"--plot {path}: draw to a .svg or a .png file")
    if suffix == ".svg":
        path.write_text(svg, encoding="utf-8")
        return
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise UsageInvalid(f"--plot {path}: a PNG is rendered by Chromium, which is not "
                           "installed here; draw to a .svg instead")
    size = re.search(r'width="(\d+)" height="(\d+)"', svg)
    width, height = (size.group(1), size.group(2)) if size else ("900", "300")
    with tempfile.TemporaryDirectory(prefix="kristal-plot-") as tmp:
        page = Path(tmp) / "picture.html"
        page.write_text(f'<html><body style="margin:0">{svg}</body></html>', encoding="utf-8")
        done = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
             # Chromium lays out no less than ~150 px of height: a shorter window is cut.
             f"--window-size={width},{max(int(height), 160)}", f"--screenshot={path.resolve()}",
             page.as_uri()], capture_output=True, timeout=120)
    if done.returncode != 0 or not path.exists():
        raise InternalError(f"--plot {path}: Chromium did not render the picture: "
                            f"{done.stderr.decode(errors='replace')[-300:]}")
