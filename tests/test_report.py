"""`fp report`: the page is self-contained, its figures match what was recorded, and every plot draws
in a real browser (headless Chromium, installed by scripts/bootstrap.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers import run_fp

TRAFFIC = "fp.bus.traffic.fraud.v1"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
PLOTS = {"progress", "freshness", "parity", "failures", "distributions"}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is missing: scripts/bootstrap.sh installs Debian's chromium for this test")
    return found


def _render_dom(page: str, profile_dir: str) -> str:
    """The page's DOM after Chromium laid it out and ran its inline check."""
    done = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--dump-dom",
                           f"file://{page}"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def _screenshot_ink(page: str, profile_dir: str, png: str) -> float:
    """Share of the rendered page's pixels that are not background white."""
    from PIL import Image

    done = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--window-size=1200,3000",
                           f"--screenshot={png}", f"file://{page}"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    image = Image.open(png).convert("L")
    histogram = image.histogram()
    return 1 - sum(histogram[250:]) / (image.width * image.height)


def test_report_of_a_demo_run_draws_every_plot_in_chromium(app, fp_home, tmp_path):
    code, out, err = run_fp(app, fp_home, "demo", "--transactions", "1500", "--seed", "11")
    assert code == 0, out[-3000:] + err[-3000:]
    assert (fp_home / "reports" / "demo.html").exists()
    # two records no decoder accepts, straight onto the bus: the worker ledgers them and goes on
    app.bus.append(TRAFFIC, [("poison-1", b"not json"), ("poison-2", b'{"event_type": 7}')])
    code, out, err = run_fp(app, fp_home, "worker", "--until-idle", "--timeout", "120")
    assert code == 0, out + err

    page = tmp_path / "report.html"
    code, out, err = run_fp(app, fp_home, "report", "--out", str(page))
    assert code == 0, out + err
    summary = json.loads(out)
    assert summary["report"] == str(page) and summary["parity_runs"] == 1 and summary["snapshots"] == 200
    assert summary["partitions"] == 16  # 4 partitions x (traffic for ofp + 3 context streams)
    text = page.read_text(encoding="utf-8")

    # self-contained: nothing is fetched when it opens
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and not re.search(r"url\((?!#)", text)  # only the SVGs' own #ids
    # the figures say what the stores hold
    with app.db.connect() as conn:
        ledgered = conn.execute("SELECT count(*) FROM apply_failures WHERE consumer = 'ofp'").fetchone()[0]
    assert ledgered == 2 and summary["failure_reasons"] >= 1
    assert summary["dataset"].startswith("dsm_")

    dom = _render_dom(str(page), str(tmp_path / "chromium"))
    figures = dict(re.findall(r'data-plot="([a-z]+)"[^>]*data-drawn="(yes|no)"', dom))
    assert figures == dict.fromkeys(PLOTS, "yes"), figures
    assert 'data-plots="5"' in dom
    assert _screenshot_ink(str(page), str(tmp_path / "chromium"), str(tmp_path / "shot.png")) > 0.05


def test_report_of_an_empty_home_says_what_is_missing(app, fp_home, tmp_path):
    page = tmp_path / "empty.html"
    code, out, _ = run_fp(app, fp_home, "report", "--out", str(page))
    assert code == 0
    assert json.loads(out)["dataset"] is None
    text = page.read_text(encoding="utf-8")
    assert "data-plot=" not in text
    for hint in ("run `fp worker`", "`fp parity`", "`fp ofs build`", "failure ledger is empty"):
        assert hint in text


@pytest.mark.parametrize("args", [["--dataset", "../../etc/passwd"], ["--dataset", "dsm_" + "0" * 32],
                                  ["--run-id", "a b"]])
def test_report_refuses_bad_ids_with_the_error_shape(app, fp_home, args):
    code, out, _ = run_fp(app, fp_home, "report", *args)
    body = json.loads(out)
    assert code == 2 and body["kind"] == "error_response"
    assert body["error_code"] in {"INVALID_REQUEST", "NOT_FOUND"}
