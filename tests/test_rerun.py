"""`python -m mnist_exp.rerun RUN [overrides]`: a recorded run trained again from its own config.yaml."""

from __future__ import annotations

import pytest

from mnist_exp import rerun, run_tags
from mnist_exp.errors import ExperimentError
from mnist_exp.run_record import log_config
from mnist_exp.store import connect
from tests.conftest import compose_cfg, store_client, store_uri

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def recorded_run(cfg, overrides=(), tags=None) -> str:
    """A run with what every run records to be rerun from (config.yaml, overrides.txt), without training it."""
    store = connect(cfg)
    run = store.client.create_run(store.experiment_id, tags=tags or {})
    log_config(store.client, run.info.run_id, cfg, list(overrides))
    store.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def reruns_of(client, run_id: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`{run_tags.RERUN_OF_TAG}` = '{run_id}'")


def test_a_rerun_with_the_same_seed_reproduces_every_epoch_and_takes_overrides(make_cfg, tmp_path, signals_handled,
                                                                                capsys):
    from mnist_exp import experiment

    overrides = ["data=mnist_sample", "epochs=2", "plots=false", "mlflow.log_model=false"]
    original = experiment.run(make_cfg(*overrides), overrides)
    uri = store_uri(tmp_path / "runs")

    assert rerun.main([original["run_id"], "--tracking-uri", uri]) == 0
    assert f"rerun of {original['run_id']}" in capsys.readouterr().out
    client = store_client(tmp_path / "runs")
    (again,) = reruns_of(client, original["run_id"])
    assert again.info.status == "FINISHED" and again.info.run_id != original["run_id"]
    for key in EPOCH_METRICS:
        curves = [[(p.step, p.value) for p in client.get_metric_history(run, key)]
                  for run in (original["run_id"], again.info.run_id)]
        assert len(curves[0]) == 2 and curves[0] == curves[1], key
    first = client.get_run(original["run_id"])
    assert again.data.metrics["test_accuracy"] == first.data.metrics["test_accuracy"]
    assert again.data.params == first.data.params, "the same config, the same data"
    assert again.data.tags[run_tags.OVERRIDES_TAG] == " ".join(overrides)

    # Overrides change the recorded config, a group option replaces the whole group.
    assert rerun.main([original["run_id"], "epochs=1", "optimizer=sgd", "--tracking-uri", uri]) == 0
    changed = next(r for r in reruns_of(client, original["run_id"]) if r.info.run_id != again.info.run_id)
    assert changed.data.params["epochs"] == "1" and changed.data.params["optimizer.name"] == "sgd"
    assert "optimizer.rho" not in changed.data.params, "none of rmsprop's keys left behind"
    assert changed.data.tags[run_tags.OVERRIDES_TAG] == " ".join([*overrides, "epochs=1", "optimizer=sgd"])
    assert [p.step for p in client.get_metric_history(changed.info.run_id, "val_accuracy")] == [1]


@pytest.fixture(scope="module")
def recorded_store(tmp_path_factory):
    """(runs_dir, {"run": a recorded run, "parent": a sweep's parent run}): one store for the error cases, which
    write nothing (each checks)."""
    runs_dir = tmp_path_factory.mktemp("rerun") / "runs"
    cfg = compose_cfg(runs_dir, "data=mnist_sample")
    return runs_dir, {"run": recorded_run(cfg), "parent": recorded_run(cfg, tags={run_tags.SWEEP_TAG: "true"})}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef0123456789abcdef in sqlite:///"),
        (["{run}", "optimizer=foo"], "optimizer/foo does not exist; choose optimizer from: adam, adamw, rmsprop, sgd"),
        (["{run}", "epochs=0"], "epochs=0 is invalid: expected an integer from 1 to 100000"),
        (["{run}", "nosuchkey=1"], "nosuchkey is not a known key"),
        (["{run}", "epochs=1,2"], "epochs=1,2: a rerun is one run; sweep with python -m mnist_exp -m"),
        (["{run}", "repeats=3"], "repeats=3: a rerun is one run; repeat with python -m mnist_exp -m"),
        (["{run}", "hydra.job.chdir=true"], "hydra.job.chdir=true: a rerun takes key=value and group=option"),
        (["{run}", "~model.nothing"], "~model.nothing: the run's config has no model.nothing"),
        (["{parent}"], "is a sweep's parent run; rerun one of its jobs"),
    ],
    ids=["unknown run", "unknown option", "bad value", "unknown key", "sweep", "repeats", "hydra key", "delete",
         "parent run"],
)
def test_what_cannot_be_rerun_is_one_line_and_no_run(recorded_store, signals_handled, capsys, arguments, message):
    runs_dir, runs = recorded_store
    code = rerun.main([argument.format(**runs) for argument in arguments] + ["--tracking-uri", store_uri(runs_dir)])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line, line
    client = store_client(runs_dir)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 2, "no new run"


def test_a_run_of_other_code_is_rerun_with_a_one_line_warning(make_cfg, tmp_path, capsys, monkeypatch):
    cfg = make_cfg("data=mnist_sample", "epochs=3")
    run_id = recorded_run(cfg, ["epochs=3", "+hydra.job.env_set.X=1"], {run_tags.GIT_COMMIT_TAG: "0" * 40})
    monkeypatch.setattr(run_tags, "source_tags", lambda: {run_tags.GIT_COMMIT_TAG: "1" * 40})

    rerun_cfg, recorded = rerun.prepare(run_id, store_uri(tmp_path / "runs"), ["batch_size=64"])
    assert (rerun_cfg.epochs, rerun_cfg.batch_size) == (3, 64) and recorded == ["epochs=3"]
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning == (f"warning: run {run_id} was trained by commit 000000000000, this checkout is 111111111111: "
                       "its metrics may not be reproduced")


def test_a_rerun_goes_to_the_store_it_was_read_from(make_cfg, tmp_path):
    """A run found in a store its config does not name (a copied store, a server) is rerun into that store;
    overrides that choose a store win."""
    import shutil

    cfg = make_cfg("data=mnist_sample")
    run_id = recorded_run(cfg)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "runs" / "mlflow.db", tmp_path / "copy" / "mlflow.db")
    rerun_cfg, _ = rerun.prepare(run_id, store_uri(tmp_path / "copy"), [])
    assert rerun_cfg.mlflow.tracking_uri == store_uri(tmp_path / "copy")
    rerun_cfg, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), [])
    assert rerun_cfg.mlflow.tracking_uri is None, "the store its config names: the config unchanged"
    with pytest.raises(ExperimentError, match="mlflow.tracking_uri='foo://x' is invalid"):
        rerun.prepare(run_id, store_uri(tmp_path / "copy"), ["mlflow.tracking_uri=foo://x"])


def test_a_run_recorded_before_the_newer_keys_existed_is_rerun_as_it_was_trained(make_cfg):
    """A config.yaml without repeats, lr_schedule, label_smoothing or data.augment: the values that give what
    every run did then, and overrides still change them."""
    from omegaconf import OmegaConf

    cfg = make_cfg("data=mnist_sample")
    OmegaConf.set_struct(cfg, False)
    for key in ("repeats", "lr_schedule", "label_smoothing"):
        del cfg[key]
    del cfg.data["augment"]
    run_id = recorded_run(cfg)
    prepared, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), [])
    assert (prepared.repeats, prepared.lr_schedule, prepared.label_smoothing, prepared.data.augment) == (
        1, "constant", 0.0, 0)
    prepared, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), ["lr_schedule=cosine", "data.augment=2"])
    assert (prepared.lr_schedule, prepared.data.augment) == ("cosine", 2)
    # A data option's own file lacks data.augment (config.yaml sets it for every dataset).
    prepared, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), ["data=fashion_mnist"])
    assert (prepared.data.name, prepared.data.augment) == ("fashion_mnist", 0)
