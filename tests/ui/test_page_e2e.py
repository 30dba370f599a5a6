"""The page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright
through ``executable_path``, against ``cilkit ui`` started as a user would, on a free port.

Marked ``ui``; ``.ci/run`` installs the ``ui`` extra, Playwright and Chromium and runs them
(``pytest -m ui``). Without them the tests skip, unless ``CILKIT_UI_E2E=required`` (set by CI),
where a missing piece fails. On a failure the page's screenshot is saved in the test's
temporary folder; with ``CILKIT_UI_SCREENSHOTS=DIR`` the documentation's screenshots are
written to DIR.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

REQUIRED = os.environ.get("CILKIT_UI_E2E") == "required"


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip(f"{module} is not installed (pip install -e '.[ui]' playwright)")


def _chromium() -> str:
    path = os.environ.get("CILKIT_CHROMIUM") or shutil.which("chromium")
    if path is None:
        if REQUIRED:
            raise RuntimeError("Chromium not found (apt-get install chromium chromium-driver)")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 600.0, every: float = 0.5):
    """Poll ``predicate`` until it is true; the limit only stops a hung page from hanging CI
    (it is no speed check: a run on a loaded machine may take minutes)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need("gradio")
    runs = tmp_path_factory.mktemp("runs")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (runs.parent / "ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cilkit", "ui", "--runs", str(runs), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"cilkit ui exited: {(runs.parent / 'ui.log').read_text()}")
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    _wait(up, "the page to serve")
    yield url, runs
    proc.send_signal(2)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = _need("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture
def page(server, browser, tmp_path, request):
    url, _ = server
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    pg.goto(url)
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        pg.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
    pg.close()


def _shot(pg, name: str) -> None:
    folder = os.environ.get("CILKIT_UI_SCREENSHOTS")
    if folder:
        pg.screenshot(path=str(Path(folder) / name), full_page=True)


def _field(pg, key: str):
    """The input of the Train form's field ``key`` (its element id is ``cfg-KEY``)."""
    return pg.locator(f'[id="cfg-{key}"]').locator("input, textarea").first


def _fill_tiny_run(pg, name: str, epochs: int) -> None:
    _field(pg, "name").fill(name)
    _field(pg, "scenario.initial_increment").fill("5")
    _field(pg, "scenario.increment").fill("5")
    _field(pg, "train.epochs").fill(str(epochs))


def _launch(pg, runs: Path, name: str, epochs: int) -> Path:
    _fill_tiny_run(pg, name, epochs)
    pg.get_by_role("button", name="Launch").click()
    message = pg.get_by_label("message", exact=True)
    _wait(lambda: message.input_value().startswith("started "), "the launch message")
    return runs / message.input_value().removeprefix("started ")


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def _choose(pg, label: str, *options: str) -> None:
    box = pg.get_by_label(label, exact=True)
    for option in options:
        box.click()
        pg.get_by_role("option", name=option, exact=True).click()
    pg.keyboard.press("Escape")


def test_train_form_launches_a_run_and_shows_its_curves(page, server):
    _, runs = server
    pg = page
    _field(pg, "learner.name").click()
    pg.get_by_role("option", name="lucir", exact=True).click()
    # The chosen learner's own options appear, generated from its typed config.
    _field(pg, "lucir-learner.lw_mr").wait_for(state="visible")
    _field(pg, "learner.name").click()
    pg.get_by_role("option", name="icarl", exact=True).click()
    _field(pg, "lucir-learner.lw_mr").wait_for(state="hidden")
    # A bad value is one line naming the key; the config is shown before launching.
    _field(pg, "train.epochs").fill("-1")
    pg.get_by_role("button", name="Show config").click()
    message = pg.get_by_label("message", exact=True)
    _wait(lambda: "train.epochs" in message.input_value(), "the validation error")
    run_dir = _launch(pg, runs, "e2e-first", 2)
    _wait(lambda: _status(run_dir) == "finished", "the run to finish")
    # The live curves: both plots drawn from the run's files.
    _wait(
        lambda: pg.locator("img").count() >= 2 or pg.locator(".js-plotly-plot").count() >= 2,
        "the live plots",
    )
    _wait(
        lambda: (
            "task" in pg.locator(".cilkit-progress").first.inner_text()
            or "no run" in pg.locator(".cilkit-progress").first.inner_text()
        ),
        "the progress bar",
    )
    _shot(pg, "ui-train.png")
    assert (run_dir / "summary.json").exists()


def test_stop_and_resume_a_run(page, server):
    _, runs = server
    pg = page
    run_dir = _launch(pg, runs, "e2e-stopped", 60)
    epochs = run_dir / "epochs.jsonl"
    _wait(lambda: epochs.exists() and epochs.read_text().strip(), "the first epoch")
    pg.get_by_role("tab", name="Runs and Compare").click()
    pg.get_by_role("button", name="Refresh").click()
    _choose(pg, "runs to compare (one to stop or resume)", run_dir.name)
    pg.get_by_role("button", name="Stop (Ctrl-C)").click()
    _wait(lambda: _status(run_dir) == "interrupted", "the run to stop")
    assert not (run_dir / "summary.json").exists()
    pg.get_by_role("button", name="Refresh").click()
    table = pg.locator("#runs-table")
    _wait(lambda: "interrupted" in table.inner_text(), "the state in the runs table")
    pg.get_by_role("button", name="Resume").click()
    _wait(lambda: _status(run_dir) == "finished", "the resumed run to finish")
    log = (run_dir / "log.txt").read_text()
    assert "resum" in log.lower()


def test_compare_two_runs_and_export_the_report(page, server):
    _, runs = server
    pg = page
    names = sorted(p.name for p in runs.iterdir() if (p / "summary.json").exists())
    assert len(names) >= 2, names
    pg.get_by_role("tab", name="Runs and Compare").click()
    pg.get_by_role("button", name="Refresh").click()
    _choose(pg, "runs to compare (one to stop or resume)", *names[:2])
    pg.get_by_role("button", name="Compare", exact=True).click()
    _wait(
        lambda: (
            "e2e-first" in pg.locator(".cilkit-summary, table").last.inner_text()
            or pg.get_by_text("avg").count() > 0
        ),
        "the summary table",
    )
    _wait(lambda: pg.locator("img").count() >= 3, "the comparison plots")
    _shot(pg, "ui-compare.png")
    pg.get_by_role("button", name="Export HTML report").click()
    reports = runs / ".ui" / "reports"
    found = _wait(lambda: list(reports.glob("*.html")), "the report file")
    text = found[0].read_text()
    assert (
        "e2e-first" in text
        and "<img" in text
        and "http://" not in text.replace("http://www.w3.org", "")
    )
    _wait(
        lambda: "report written" in pg.get_by_label("runs message", exact=True).input_value(),
        "the export message",
    )


def test_inference_top5_and_a_text_file(page, server, tmp_path):
    from PIL import Image

    _, runs = server
    pg = page
    image = tmp_path / "seven.png"
    Image.new("L", (40, 40), 0).save(image)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    pg.get_by_role("tab", name="Inference").click()
    pg.get_by_role("button", name="Refresh runs").first.click()
    finished = sorted(p.name for p in runs.iterdir() if (p / "summary.json").exists())
    _choose(pg, "finished run", finished[0])
    _wait(lambda: pg.get_by_label("task checkpoint", exact=True).input_value(), "a checkpoint")
    pg.locator("input[type=file]").first.set_input_files([str(image), str(text)])
    pg.get_by_role("button", name="Predict top-5").click()
    _wait(lambda: pg.locator(".cilkit-answer").count() == 1, "the answer")
    answer = pg.locator(".cilkit-answer").first.inner_text()
    assert "seven.png" in answer and "CNN" in answer and "%" in answer
    rows = pg.locator(".cilkit-answer table.cilkit-top").first.locator("tr")
    assert rows.count() == 5
    error = pg.locator(".cilkit-error").first.inner_text()
    assert error == "notes.txt: not an image (no image format recognised)"


def test_the_page_serves_no_file_outside_the_runs_folder(server):
    url, runs = server
    secret = runs.parent / "secret.txt"
    secret.write_text("private")
    for path in (str(secret), "/etc/passwd"):
        for route in ("gradio_api/file=", "file="):
            try:
                with urllib.request.urlopen(url + route + path, timeout=10) as r:
                    body = r.read().decode(errors="replace")
            except urllib.error.HTTPError as err:
                assert err.code in (403, 404), (route, path, err.code)
                continue
            assert "private" not in body and "root:" not in body, (route, path)


def test_a_non_loopback_host_warns_that_the_page_has_no_login(tmp_path):
    _need("gradio")
    from cilkit.ui.page import serve

    with pytest.warns(UserWarning, match="the page has no login"):
        page, backend = serve(tmp_path / "runs", host="0.0.0.0", port=_free_port(), block=False)
    try:
        assert backend.root == (tmp_path / "runs").resolve()
    finally:
        page.close()
