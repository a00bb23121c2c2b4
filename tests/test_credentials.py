"""Passwords in URLs: masked in everything written or printed, moved to the variable their library reads."""

from __future__ import annotations

import logging

import pytest

from mnist_exp.config.paths import tracking_uri
from mnist_exp.system import credentials, redaction
from mnist_exp.system.errors import ExperimentError, report
from mnist_exp.tracking.run_inputs import log_config, log_params
from mnist_exp.tracking.run_tags import run_name
from mnist_exp.tracking.store import connect, ui_command

SECRET = "S3cret-pw"


@pytest.fixture
def clean_environment(monkeypatch):
    """The variables take_password writes, restored after the test."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "MYSQL_PWD"):
        # Set first so monkeypatch records it: it then unsets (or restores) what take_password writes.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("text, masked", [
    (f"http://alice:{SECRET}@host:5000", "http://alice:***@host:5000"),
    (f"see postgresql+psycopg://u:{SECRET}@db/mlflow, then", "see postgresql+psycopg://u:***@db/mlflow, then"),
    (f"mysql://:{SECRET}@h/db?password={SECRET}&x=1", "mysql://:***@h/db?password=***&x=1"),
    ("http://alice:p@ss@host/x", "http://alice:***@host/x"),  # an @ in the password itself
    ("http://host:5000/a@b http://alice@host sqlite:////a.db", "http://host:5000/a@b http://alice@host sqlite:////a.db"),
])
def test_mask_hides_every_password_and_nothing_else(text, masked):
    assert redaction.mask(text) == masked


def test_passwords_on_the_command_line_move_to_the_variables_their_libraries_read(clean_environment):
    import os

    arguments = ["epochs=1", "mlflow.tracking_uri=http://alice:S3%40cret@host:5000",
                 f"+hydra.sweeper.storage=postgresql://optuna:{SECRET}@db/optuna"]
    assert credentials.take_from_arguments(arguments) == [
        "epochs=1", "mlflow.tracking_uri=http://alice:***@host:5000",
        "+hydra.sweeper.storage=postgresql://optuna:***@db/optuna",
    ]
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "S3@cret")
    assert os.environ["PGPASSWORD"] == SECRET
    assert credentials.connection_url("http://alice:***@host:5000/") == "http://host:5000/"
    assert credentials.connection_url("postgresql://optuna:***@db/optuna") == "postgresql://optuna@db/optuna"
    assert credentials.take_from_arguments(["mlflow.tracking_uri=http://alice:***@host"]) == [
        "mlflow.tracking_uri=http://alice:***@host"], "a masked URL (a run's recorded config) is taken as it is"


def test_passwords_that_cannot_be_kept_out_of_the_records_are_one_line(clean_environment):
    with pytest.raises(ExperimentError, match=r"^hydra.sweeper.storage=redis://u:\*\*\*@h holds a password"):
        credentials.take_from_arguments([f"hydra.sweeper.storage=redis://u:{SECRET}@h"])
    with pytest.raises(ExperimentError, match="another URL already needs PGPASSWORD to hold another password"):
        credentials.take_from_arguments(["mlflow.tracking_uri=postgresql://u:a@h/db",
                                         "hydra.sweeper.storage=postgresql://u:b@h/optuna"])


def test_error_lines_and_log_records_are_masked(capsys, monkeypatch):
    report(f"cannot reach http://alice:{SECRET}@host:5000")
    assert capsys.readouterr().err == "error: cannot reach http://alice:***@host:5000\n"

    monkeypatch.setattr(credentials, "_masking", False)
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(logging, "_logRecordFactory", factory)  # restored after the test
    credentials.mask_log_records()
    record = logging.getLogger("hydra").makeRecord("hydra", logging.INFO, __file__, 1, "#0 : %s", (
        f"mlflow.tracking_uri=http://alice:{SECRET}@host",), None)
    assert record.getMessage() == "#0 : mlflow.tracking_uri=http://alice:***@host"


def test_a_password_in_a_config_file_is_masked_in_the_run_record(tmp_path, make_cfg, clean_environment):
    """The net behind the command line: a URL written into YAML reaches the params and config.yaml masked."""
    cfg = make_cfg()
    store = connect(cfg)
    client = store.client
    run_id = client.create_run(store.experiment_id).info.run_id
    cfg.mlflow.tracking_uri = f"postgresql://u:{SECRET}@db/mlflow"
    log_params(client, run_id, {"mlflow.tracking_uri": cfg.mlflow.tracking_uri})
    log_config(client, run_id, cfg, [f"hydra.sweeper.storage=mysql://u:{SECRET}@db/x"])
    folder = tmp_path / "artifacts"
    folder.mkdir()
    client.download_artifacts(run_id, "", str(folder))
    written = client.get_run(run_id).data.params["mlflow.tracking_uri"] + "".join(
        path.read_text() for path in folder.rglob("*") if path.is_file())
    assert SECRET not in written and "postgresql://u:***@db/mlflow" in written and "mysql://u:***@db/x" in written
    assert tracking_uri(cfg) == "postgresql://u:***@db/mlflow", "and the password is where libpq reads it"
    assert SECRET not in ui_command(f"http://a:{SECRET}@h") + ui_command(f"postgresql://u:{SECRET}@db/m")
    assert run_name([f"data.path=http://a:{SECRET}@h/x.npz"]) == "data.path=http://a:***@h/x.npz"
