"""The MLflow UI in a real headless Chromium: the run, its val_accuracy chart and its confusion matrix are visible;
the experiment opens as model training, a sweep's jobs are grouped under their parent, two runs compare in charts."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mnist_exp import experiment
from mnist_exp.config.paths import tracking_uri
from mnist_exp.tracking.store import connect
from tests.conftest import (
    CHROMIUM,
    SCREENSHOTS,
    chromium_page,
    compose_cfg,
    free_port,
    run_cli,
    single_sweep,
    wait_for_http,
)

# MLflow 3.17's UI shows an experiment in the workflow its browser last chose (GenAI unless told otherwise); the
# address can choose it, as the sidebar's "Model training" switch does.
MODEL_TRAINING = "workflowType=machine_learning"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,  # a run, a sweep and `mlflow ui` in subprocesses
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/install-system-packages.sh)"),
]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A real 1-epoch run and a sweep of two in a temporary store, and `mlflow ui` serving that store on 127.0.0.1."""
    pytest.importorskip("playwright", reason="needs the playwright package (pip install -e '.[test]')")
    runs_dir = tmp_path_factory.mktemp("ui") / "runs"
    cfg = compose_cfg(runs_dir, "data=mnist_sample", "epochs=1", "mlflow.log_model=false")
    outcome = experiment.run(cfg, overrides=["data=mnist_sample", "epochs=1"])
    sweep = run_cli("-m", "optimizer=sgd,adam", "debug=fast_dev_run", runs_dir=runs_dir)
    assert sweep.returncode == 0, sweep.stderr
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
        yield address, store.experiment_id, store.client.get_run(outcome["run_id"]), single_sweep(store.client)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_ui_shows_the_run_its_chart_and_its_confusion_matrix(ui):
    from playwright.sync_api import expect

    address, experiment_id, run, _ = ui
    run_page = f"{address}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    with chromium_page() as page:
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


def test_the_experiment_opens_as_model_training_with_sweeps_grouped_and_two_runs_compared(ui):
    from playwright.sync_api import expect

    address, experiment_id, _, (parent, children) = ui
    # The kind as the UI reads it, from the server the UI talks to.
    asked = f"{address}/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    with urllib.request.urlopen(asked, timeout=60) as answer:
        tags = {tag["key"]: tag["value"] for tag in json.load(answer)["experiment"]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    with chromium_page() as page:
        page.goto(f"{address}/#/experiments/{experiment_id}?{MODEL_TRAINING}")
        # Model training: the runs table and the model registry; no GenAI pages (traces' evaluation runs).
        expect(page.get_by_text("Runs", exact=True).first).to_be_visible()
        expect(page.get_by_text("Model registry", exact=True).first).to_be_visible()
        expect(page.get_by_text("Evaluation runs", exact=True)).to_have_count(0)

        # The sweep: one parent row, its jobs hidden until it is expanded, then shown under it.
        parent_row = page.locator("[role=row]").filter(has_text=parent.info.run_name)
        expect(parent_row).to_have_count(1)
        child_rows = [page.locator("[role=row]").filter(has_text=child.info.run_name) for child in children]
        for row in child_rows:
            expect(row).to_have_count(0)
        parent_row.locator("button").first.click()
        for row in child_rows:
            expect(row).to_have_count(1)
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-sweep.png"))

        for row in child_rows:
            row.locator("input.ag-checkbox-input").first.check()
        page.get_by_role("button", name="Compare").click()
        expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
        for child in children:
            expect(page.get_by_text(child.info.run_id).first).to_be_visible()
        expect(page.locator("svg.main-svg").first).to_be_visible()  # the parallel coordinates chart
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-compare.png"), full_page=True)
