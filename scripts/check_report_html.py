#!/usr/bin/env python
"""Render a report.html in headless Chromium, save a screenshot, and fail unless every plot decoded.

Usage: .venv/bin/python scripts/check_report_html.py reports/quickstart/report.html [screenshot.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from compress.report.browser import check_html


def main() -> int:
    html = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/quickstart/report.html")
    shot = Path(sys.argv[2]) if len(sys.argv) > 2 else html.with_name("screenshot.png")
    result = check_html(html, shot)
    print(result)
    ok = result["images"] and result["images_ok"] == result["images"] and (result["pixel_std"] or 0) > 0.01
    print("ok: every plot rendered" if ok else "FAILED: plots missing or blank page")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
