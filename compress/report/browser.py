"""Check a report.html in headless Chromium: every embedded plot decoded, and a screenshot that is not blank.

Uses the Debian `chromium` package when present (`apt-get install -y chromium chromium-driver`); `find_chromium()`
returns None without it, and callers (tests) skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=5000"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_html(html: str | Path, screenshot: str | Path, width: int = 1200, height: int = 2400,
               timeout: float = 120) -> dict:
    """Load `html` in headless Chromium, `width` pixels wide; return {"images_ok", "images", "page_width",
    "window_width", "tables_scrolling", "screenshot", "pixel_std"}.

    `images_ok`/`images` come from the page's own load-time count of decoded <img> elements (report.html sets
    `data-images-ok="n/m"` on <body>); `pixel_std` is the standard deviation of the screenshot's pixels (0 for a
    blank page); `page_width` > `window_width` means the page overflows the window sideways, `tables_scrolling`
    counts the tables too wide for the page that scroll inside their own box (both None for an older report).
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
    url = Path(html).resolve().as_uri()
    dom = subprocess.run([browser, *FLAGS, f"--window-size={width},{height}", "--dump-dom", url], capture_output=True,
                         text=True, timeout=timeout).stdout
    found = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    layout = re.search(r'data-layout="(\d+)/(\d+)/(\d+)"', dom)
    page_width, window_width, scrolling = (int(g) for g in layout.groups()) if layout else (None, None, None)
    screenshot = Path(screenshot).resolve()
    subprocess.run([browser, *FLAGS, f"--screenshot={screenshot}", f"--window-size={width},{height}", url],
                   capture_output=True, text=True, timeout=timeout)
    pixel_std = None
    if screenshot.exists():
        import matplotlib.image as mpimg

        pixel_std = float(mpimg.imread(str(screenshot))[..., :3].std())
    return {"images_ok": int(found.group(1)) if found else None, "images": int(found.group(2)) if found else None,
            "page_width": page_width, "window_width": window_width, "tables_scrolling": scrolling,
            "screenshot": str(screenshot), "pixel_std": pixel_std}
