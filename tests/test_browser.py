"""The MLflow UI in a real headless Chromium: the run, its val_accuracy chart and its confusion matrix are visible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_exp import experiment
from mnist_exp.store import connect, tracking_uri
from tests.conftest import PROJECT_ROOT, compose_cfg, free_port, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# Screenshots are kept for people to look at after CI: <project>/test-artifacts unless told otherwise.
SCREENSHOTS = Path(os.environ.get("MNIST_EXP_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,  # a run, and `mlflow ui` in a subprocess
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/install-system-packages.sh)"),
]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A real 1-epoch run in a temporary store, and `mlflow ui` serving that store on 127.0.0.1."""
    pytest.importorskip("playwright", reason="needs the playwright package (pip install -e '.[test]')")
    cfg = compose_cfg(tmp_path_factory.mktemp("ui") / "runs", "data=mnist_sample", "epochs=1",
                      "mlflow.log_model=false")
    outcome = experiment.run(cfg, overrides=["data=mnist_sample", "epochs=1"])
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", tracking_uri(cfg),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{address}/health", server)
        store = connect(cfg)
        yield address, store.experiment_id, store.client.get_run(outcome["run_id"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_ui_shows_the_run_its_chart_and_its_confusion_matrix(ui):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a cold UI on a busy 2-core machine
    address, experiment_id, run = ui
    run_page = f"{address}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)

            page.goto(f"{address}/#/experiments/{experiment_id}/runs")
            expect(page.get_by_text(run.info.run_name).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-experiment.png"))

            page.goto(f"{run_page}/model-metrics")
            page.get_by_placeholder("Search metric charts").fill("val_accuracy")
            title = page.get_by_text("val_accuracy", exact=True).first
            expect(title).to_be_visible()
            # The chart card around the title, once Plotly has drawn into it.
            card = page.locator("div").filter(has=title).filter(has=page.locator("svg.main-svg")).last
            expect(card.locator("svg.main-svg").first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-metrics.png"))

            page.goto(f"{run_page}/artifacts")
            page.get_by_text("plots", exact=True).first.click()
            page.get_by_text("confusion_matrix.png", exact=True).first.click()
            image = page.locator("img").filter(visible=True).last
            expect(image).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle())
            page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-confusion-matrix.png"))
        finally:
            browser.close()

