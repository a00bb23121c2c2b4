"""The Optuna dashboard (`python -m mnist_exp.dashboard`, what `make dashboard` runs): it opens the storage searches
write to, says in one line when there is none, and in a real headless Chromium shows a real study and its trials."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from mnist_exp.commands import dashboard
from mnist_exp.config.plan import resolve
from mnist_exp.multirun.search.search_space import default_storage_url, storage_url
from tests.conftest import (
    CHROMIUM,
    CONF_DIR,
    PROJECT_ROOT,
    SCREENSHOTS,
    chromium_page,
    free_port,
    run_cli,
    wait_for_http,
)

STUDY = "mnist-mlp-mnist_sample"  # hparams_search=optuna's study name on data=mnist_sample


def test_by_default_the_dashboard_opens_the_storage_a_search_writes_to():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    searched = storage_url(cfg.hydra.sweeper.storage, resolve(cfg).runs_dir)
    assert default_storage_url() == searched == f"sqlite:///{PROJECT_ROOT / 'runs' / 'optuna.db'}"


@pytest.mark.fresh_store
def test_without_a_study_storage_the_dashboard_says_so_in_one_line_and_creates_none(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    assert dashboard.main(["--storage", missing, "--port", str(free_port())]) == 2
    assert capsys.readouterr().err == (
        f"error: no study storage at {missing}; run a search first: python -m mnist_exp -m hparams_search=optuna\n"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.fresh_store
def test_what_cannot_be_served_is_one_line_and_no_server(tmp_path, capsys):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=STUDY, storage=storage)
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    capsys.readouterr()  # Optuna's line about the new study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = {
            f"cannot read the Optuna storage sqlite:///{other}: ": ["--storage", f"sqlite:///{other}"],
            f"cannot serve on 127.0.0.1:{busy}: ": ["--storage", storage, "--port", str(busy)],
            "--port 0 is invalid: expected an integer from 1 to 65535": ["--storage", storage, "--port", "0"],
            "--storage optuna.db is invalid: expected a URL": ["--storage", "optuna.db"],
        }
        for line, arguments in cases.items():
            assert dashboard.main(arguments) == 2, arguments
            err = capsys.readouterr().err
            assert err.startswith(f"error: {line}") and len(err.splitlines()) == 1, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["optuna.db", "other.db"]


def test_a_storage_password_goes_to_the_driver_and_is_never_printed(capsys, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "")  # unset again after the test
    # Nothing answers on port 1: the storage fails before any server starts.
    assert dashboard.main(["--storage", "postgresql://optuna:s3cret@127.0.0.1:1/optuna"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the Optuna storage postgresql://optuna:***@127.0.0.1:1/optuna: ")
    assert "s3cret" not in err and len(err.splitlines()) == 1
    assert os.environ["PGPASSWORD"] == "s3cret"


@pytest.mark.e2e
@pytest.mark.slow  # a search and the dashboard in subprocesses
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/install-system-packages.sh)")
def test_the_dashboard_shows_a_real_study_and_each_of_its_trials(tmp_path):
    from playwright.sync_api import expect

    pytest.importorskip("optuna_dashboard", reason="needs the dashboard extra (pip install -e '.[dashboard]')")
    import optuna

    runs_dir = tmp_path / "runs"
    search = run_cli("-m", "hparams_search=optuna", "data=mnist_sample", "epochs=1", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.pruner.name=none", runs_dir=runs_dir)
    assert search.returncode == 0, search.stderr
    storage = f"sqlite:///{runs_dir / 'optuna.db'}"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    study_id = optuna.storages.RDBStorage(storage).get_study_id_from_name(STUDY)
    assert len([trial for trial in study.trials if trial.state.is_finished()]) == 3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnist_exp.dashboard", "--storage", storage, "--port", str(port)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    address = f"http://127.0.0.1:{port}/dashboard"
    try:
        wait_for_http(address, server)
        with chromium_page() as page:
            page.goto(address)
            page.get_by_text(STUDY).first.click()
            expect(page).to_have_url(f"{address}/studies/{study_id}")
            # What the page says is the best trial is the study's, as Optuna reads it from the storage.
            expect(page.get_by_text(f"Best Trial (number={study.best_trial.number})")).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "optuna-dashboard-study.png"))

            page.goto(f"{address}/studies/{study_id}/trials")
            expect(page.get_by_text(f"{len(study.trials)} Trials", exact=True)).to_be_visible()
            for trial in study.trials:
                expect(page.get_by_text(f"Trial {trial.number}", exact=True)).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "optuna-dashboard-trials.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)
