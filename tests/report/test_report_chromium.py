"""The report as a browser shows it: headless Chromium (Debian's package, which .ci/run installs) renders the page
from file:// with no network, takes a screenshot into the test's temp dir, logs no console message, and decodes
every image."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

from align.report import ReportConfig, run

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=(
    f"headless Chromium not installed ({CHROMIUM} is absent); install Debian's package with "
    "`apt-get install -y chromium` (.ci/run does)"))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
# Put before the page's Content-Security-Policy (which forbids scripts), so it runs: it records every error event
# (script errors, and images or other resources that fail to load) and, once the page has loaded, how many images
# decoded, as attributes of <body> that --dump-dom shows.
PROBE = """<script>
const errors = [];
addEventListener("error", e => errors.push(String(e.message || (e.target && e.target.src) || e.type)), true);
addEventListener("load", () => {
  const images = [...document.images];
  const decoded = images.filter(img => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute("data-images-ok", decoded + "/" + images.length);
  document.body.setAttribute("data-errors", JSON.stringify(errors));
});
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """What the page logged to the console: Chromium writes each message (console.*, uncaught errors, blocked
    loads) to stderr as an INFO:CONSOLE line."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_report_renders_in_chromium_without_console_messages_and_every_image_loads(hand_made_run, tmp_path):
    report = run(ReportConfig(run_dir=str(hand_made_run), out=str(tmp_path / "report.html")))
    page = report.read_text(encoding="utf-8")
    count = page.count("<img ")
    assert count >= 4

    shot = tmp_path / "report.png"
    rendered = chromium(tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
                        report.as_uri())
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert console_messages(rendered.stderr) == []
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (1280, 2000)

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dumped = chromium(tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert console_messages(dumped.stderr) == []
    body = re.search(r"<body[^>]*>", dumped.stdout)
    assert body is not None, dumped.stdout[:2000]
    attributes = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(0)))
    assert attributes.get("data-images-ok") == f"{count}/{count}", attributes
    assert json.loads(attributes["data-errors"].replace("&quot;", '"')) == []
