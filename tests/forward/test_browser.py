"""A real browser through the forward proxy: headless Chromium loads a page, its script and image."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
def test_headless_chromium_through_forward_proxy(start_proxy, origin, tmp_path):
    log = tmp_path / "access.log"
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0", "--allow-private",
                    "--access-log", str(log), "--log-format", "json")
    profile = tmp_path / "profile"
    # Chromium never proxies loopback unless told to (<-loopback> removes that rule).
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}",
           f"--proxy-server=http://127.0.0.1:{p.port}", "--proxy-bypass-list=<-loopback>",
           "--virtual-time-budget=5000", "--dump-dom", f"{origin.url}/page.html"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert "script ran; image loaded" in out.stdout, out.stderr[-2000:]
    deadline = time.monotonic() + 3
    targets = set()
    while time.monotonic() < deadline:
        if log.exists():
            targets = {json.loads(x)["target"] for x in log.read_text().splitlines()}
        if {f"{origin.url}/page.html", f"{origin.url}/script.js",
                f"{origin.url}/img.png"} <= targets:
            break
        time.sleep(0.1)
    assert {f"{origin.url}/page.html", f"{origin.url}/script.js",
            f"{origin.url}/img.png"} <= targets
    # The origin saw the proxy (anonymous level: Via, no client address).
    headers = {n.decode().lower(): v.decode() for n, v in origin.requests[-1][2]}
    assert "fastproxy" in headers.get("via", "")
    assert "x-forwarded-for" not in headers
