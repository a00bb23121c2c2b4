"""The experiment runs are recorded in: created or found, and marked so MLflow 3's UI opens it as model training."""

from __future__ import annotations

from mnist_exp.config.paths import tracking_uri
from mnist_exp.tracking.store import EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT, connect
from tests.conftest import compose_cfg, store_client

# Literal, as MLflow's UI reads them (mlflow/server/js/build): a renamed constant must fail here.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def test_the_experiment_opens_as_model_training_in_the_ui(tmp_path):
    assert (EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT) == (KIND_TAG, MODEL_TRAINING)
    cfg = compose_cfg(tmp_path / "runs", "mlflow.experiment=new")
    store = connect(cfg)
    assert store.client.get_experiment(store.experiment_id).tags[KIND_TAG] == MODEL_TRAINING


def test_an_existing_experiment_without_a_kind_gets_it_and_one_with_a_kind_keeps_it(tmp_path):
    cfg = compose_cfg(tmp_path / "runs", "mlflow.experiment=old")
    connect(cfg)  # creates the store's tables
    client = store_client(tracking_uri(cfg))
    unmarked = client.create_experiment("unmarked")
    genai = client.create_experiment("genai", tags={KIND_TAG: "genai_development"})
    assert KIND_TAG not in client.get_experiment(unmarked).tags

    for name in ("unmarked", "genai"):
        connect(compose_cfg(tmp_path / "runs", f"mlflow.experiment={name}"))
    assert client.get_experiment(unmarked).tags[KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(genai).tags[KIND_TAG] == "genai_development", "someone's choice is kept"


def test_a_store_that_refuses_the_tag_still_takes_runs(tmp_path, monkeypatch, caplog):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = compose_cfg(tmp_path / "runs", "mlflow.experiment=someone-elses")
    connect(compose_cfg(tmp_path / "runs"))  # creates the store's tables
    store_client(tracking_uri(cfg)).create_experiment("someone-elses")

    def refuse(self, *args, **kwargs):
        raise MlflowException("Permission denied: EDIT on experiment")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", refuse)
    store = connect(cfg)
    assert store.client.get_experiment(store.experiment_id).name == "someone-elses"
    assert "not tagged: Permission denied" in caplog.text
