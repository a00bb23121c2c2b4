"""`python -m mnist_exp.runs`: filters, sort, columns, CSV and JSON, --best, --group, show and diff, on stores
the tests write themselves (runs recorded without training)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from mnist_exp import config
from mnist_exp.commands import runs
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_inputs import log_config, log_params
from mnist_exp.tracking.store import connect
from tests.conftest import PROJECT_ROOT, compose_cfg

DIGEST = "0123456789abcdef"


class TinyStore:
    """A store of runs recorded as a training run records them (params, final and per-epoch metrics, tags)."""

    def __init__(self, make_cfg, *base: str):
        self.make_cfg = lambda *overrides: make_cfg("data=mnist_sample", *base, *overrides)
        self.store = connect(self.make_cfg())
        self.uri = self.store.uri

    def add(self, *overrides: str, val_accuracy: float | None = None, test_accuracy: float | None = None,
            val_loss: float | None = None, state: str = "COMPLETE", status: str = "FINISHED",
            digest: str = DIGEST, experiment: str | None = None) -> str:
        cfg = self.make_cfg(*overrides)
        client = self.store.client
        experiment_id = self.store.experiment_id
        if experiment is not None:
            # Created as a run creates it: its artifacts in the store's folder, never ./mlruns.
            experiment_id = connect(self.make_cfg(f"mlflow.experiment={experiment}")).experiment_id
        tags = {run_tags.STATE_TAG: state, run_tags.OVERRIDES_TAG: " ".join(overrides)}
        if state == "FAIL":
            tags[run_tags.FAILURE_TAG] = "TrainingDiverged: loss became nan at epoch 1"
        run_id = client.create_run(experiment_id, run_name=" ".join(overrides) or "defaults", tags=tags).info.run_id
        log_params(client, run_id, {**config.flatten(cfg), "dataset.name": "mnist_sample", "dataset.digest": digest,
                                    "dataset.train_examples": "3600", "dataset.val_examples": "400",
                                    "dataset.test_examples": "1000"})
        log_config(client, run_id, cfg, list(overrides))  # what a rerun starts from, as every run records it
        for key, value in (("val_accuracy", 0.1), ("final_val_accuracy", val_accuracy), ("val_loss", 9.0),
                           ("final_val_loss", val_loss), ("test_accuracy", test_accuracy)):
            if value is not None:
                client.log_metric(run_id, key, value, step=1)
        if state == "COMPLETE":
            client.log_metric(run_id, "epochs_completed", 1, step=1)
        client.set_terminated(run_id, status)
        return run_id


@pytest.fixture
def tiny_store(make_cfg):
    return TinyStore(make_cfg)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store the reading tests share (a new store costs seconds): (store, {name: run id}).
    sgd [512] 0.45, adam [512] 0.91, adam [256,128] 0.93, a FAILED sgd, and two runs like `adam`:
    `twin` identical, `other_data` on data of another digest."""
    runs_dir = tmp_path_factory.mktemp("shared") / "runs"
    store = TinyStore(lambda *overrides: compose_cfg(runs_dir, *overrides))
    ids = {
        "sgd": store.add("optimizer=sgd", val_accuracy=0.45, test_accuracy=0.44, val_loss=1.5),
        "adam": store.add("optimizer=adam", val_accuracy=0.91, test_accuracy=0.9, val_loss=0.3),
        "wide": store.add("optimizer=adam", "model.hidden_units=[256,128]", val_accuracy=0.93,
                          test_accuracy=0.92, val_loss=0.25),
        "failed": store.add("optimizer=sgd", "optimizer.lr=10", state="FAIL", status="FAILED"),
        "twin": store.add("optimizer=adam", val_accuracy=0.91, test_accuracy=0.9, val_loss=0.3),
        "other_data": store.add("optimizer=adam", val_accuracy=0.91, test_accuracy=0.9, val_loss=0.3,
                                digest="f" * 16),
    }
    return store, ids


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = runs.main(list(args))
    except SystemExit as leaving:  # argparse's errors leave through errors.exit_with
        code = leaving.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(capsys, store, *args: str) -> list[str]:
    """The run ids a --columns run_id listing prints."""
    code, out, err = run_main(capsys, "--tracking-uri", store.uri, "--columns", "run_id", *args)
    assert code == 0, err
    return out.splitlines()[1:]


def test_where_filters_on_params_final_metrics_tags_and_status(shared_store, capsys):
    store, ids = shared_store
    failed = ids["failed"]
    assert listed(capsys, store, "--where", "optimizer.name=sgd", "--sort", "run_id") == sorted([ids["sgd"], failed])
    assert set(listed(capsys, store, "--where", "val_accuracy>0.92")) == {ids["wide"]}
    assert set(listed(capsys, store, "--where", "model.hidden_units=[512]", "--where", "val_accuracy>0.9")) == {
        ids["adam"], ids["twin"], ids["other_data"]}
    assert listed(capsys, store, "--where", "model.hidden_units=[256, 128]") == [ids["wide"]]
    assert listed(capsys, store, "--where", "status=FAILED") == [failed]
    assert listed(capsys, store, "--where", "mnist_exp.state!=COMPLETE") == [failed]
    assert listed(capsys, store, "--where", "tags.mnist_exp.failure~nan") == [failed]
    assert listed(capsys, store, "--where", "optimizer.lr<=0.001", "--where", "model.hidden_units!=[512]",
                  "--sort", "val_accuracy") == [ids["wide"]]
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--where", "val_accuracy>0.99")
    assert (code, out) == (0, "no runs match\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--where", "nosuch=1"], "--where: no run has a key 'nosuch'; keys: run_id, experiment,"),
        (["--where", "val_accuracy=>0.9"], "--where 'val_accuracy=>0.9': bad operator '=>'"),
        (["--where", "optimizer.name"], "--where 'optimizer.name': expected KEY OP VALUE"),
        (["--where", "optimizer.name<sgd"], "< compares numbers, and 'sgd' is not one"),
        (["--sort", "-nosuch"], "--sort: no run has a key 'nosuch'"),
        (["--columns", "run_id,nosuch"], "--columns: no run has a key 'nosuch'"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["show", "0" * 32], f"no run {'0' * 32} in "),
        (["diff", "0" * 32, "1" * 32], f"no run {'0' * 32} in "),
        (["diff", "0" * 32], "diff needs at least two run ids"),
        (["show"], "the following arguments are required: run"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(shared_store, capsys, arguments, message):
    store, _ = shared_store
    code, out, err = run_main(capsys, *arguments, "--tracking-uri", store.uri)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}") or (message in err and err.startswith("error: ")), err
    assert len(err.strip().splitlines()) == 1, err
    if "nosuch" in message:
        assert "optimizer.name" in err and "final_val_accuracy" in err and "mnist_exp.state" in err


def test_sort_and_columns_choose_order_and_cells(shared_store, capsys):
    store, ids = shared_store
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--sort", "-val_accuracy", "--where", "seed=42",
                            "--where", "dataset.digest=" + DIGEST, "--where", "run_id!=" + ids["twin"],
                            "--columns", "run_id,optimizer.name,model.hidden_units,val_accuracy,epochs_completed")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["run_id", "optimizer.name", "model.hidden_units", "val_accuracy", "epochs_completed"]
    assert [line.split()[0] for line in lines] == [ids["wide"], ids["adam"], ids["sgd"], ids["failed"]]
    assert lines[0].split()[1:] == ["adam", "[256,", "128]", "0.9300", "1"]
    assert lines[-1].split()[1:] == ["sgd", "[512]", "-", "-"]
    ordered = listed(capsys, store, "--sort", "optimizer.name,-test_accuracy", "--where", "dataset.digest=" + DIGEST,
                     "--where", "run_id!=" + ids["twin"], "--limit", "3")
    assert ordered == [ids["wide"], ids["adam"], ids["sgd"]]


def test_csv_and_json_carry_every_value_at_full_precision(shared_store, capsys):
    store, ids = shared_store
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--format", "csv", "--sort", "-val_accuracy")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == len(ids) and [row["run_id"] for row in table][0] == ids["wide"]
    assert table[-1]["run_id"] == ids["failed"] and table[-1]["metrics.final_val_accuracy"] == ""
    table = {row["run_id"]: row for row in table}
    assert table[ids["wide"]]["metrics.final_val_accuracy"] == "0.93"
    assert table[ids["wide"]]["params.model.hidden_units"] == "[256, 128]"
    assert table[ids["sgd"]]["state"] == "COMPLETE" and table[ids["sgd"]]["params.optimizer.name"] == "sgd"
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--format", "json", "--where", "optimizer.name=sgd",
                            "--where", "state=COMPLETE")
    (run,) = json.loads(out)
    assert {"run_id", "status", "params", "metrics", "tags"} <= set(run)
    assert run["run_id"] == ids["sgd"] and run["status"] == "FINISHED"
    assert run["params"]["optimizer.name"] == "sgd" and run["metrics"]["final_val_accuracy"] == 0.45
    assert run["tags"][run_tags.STATE_TAG] == "COMPLETE"
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--format", "csv", "--columns", "run_id,val_loss",
                            "--where", "optimizer.name=sgd", "--sort", "val_loss")
    assert out.splitlines() == ["run_id,val_loss", f"{ids['sgd']},1.5", f"{ids['failed']},"]


def test_best_follows_each_experiments_optimized_metric(tiny_store, capsys):
    accuracy = [tiny_store.add(f"optimizer.lr={lr}", val_accuracy=acc, val_loss=loss)
                for lr, acc, loss in ((0.1, 0.8, 0.1), (0.2, 0.9, 0.9))]
    loss = [tiny_store.add("optimized_metric=val_loss", f"optimizer.lr={lr}", val_accuracy=acc, val_loss=value,
                           experiment="by-loss") for lr, acc, value in ((0.1, 0.95, 0.4), (0.2, 0.1, 0.05))]
    code, out, _ = run_main(capsys, "--tracking-uri", tiny_store.uri, "--best", "--columns", "experiment,run_id")
    assert code == 0
    assert sorted(line.split()[1] for line in out.splitlines()[1:]) == sorted([accuracy[1], loss[1]])


def test_best_of_an_experiment_minimising_the_model_size_is_its_smallest_model(tiny_store, capsys):
    small, large = (tiny_store.add("optimized_metric=parameters", f"model.hidden_units=[{width}]",
                                   val_accuracy=accuracy, val_loss=0.3) for width, accuracy in ((16, 0.8), (512, 0.9)))
    for run_id, parameters in ((small, 12730), (large, 407050)):
        tiny_store.store.client.log_metric(run_id, "parameters", parameters, step=0)
    code, out, _ = run_main(capsys, "--tracking-uri", tiny_store.uri, "--best", "--columns", "run_id,parameters")
    assert code == 0
    assert [line.split() for line in out.splitlines()[1:]] == [[small, "12730"]], "a count is shown whole"


def test_group_averages_each_configuration_over_its_seeds(tiny_store, capsys):
    for seed, sgd, adam in ((1, 0.40, 0.90), (2, 0.50, 0.88), (3, None, 0.92)):
        tiny_store.add(f"seed={seed}", "optimizer=adam", val_accuracy=adam, test_accuracy=adam - 0.01, val_loss=0.3)
        if sgd is None:
            tiny_store.add(f"seed={seed}", "optimizer=sgd", state="FAIL", status="FAILED")
        else:
            tiny_store.add(f"seed={seed}", "optimizer=sgd", val_accuracy=sgd, test_accuracy=sgd, val_loss=1.5)
    code, out, _ = run_main(capsys, "--tracking-uri", tiny_store.uri, "--group")
    assert code == 0, out
    header, adam, sgd = out.splitlines()
    assert header.split() == ["seeds", "val_acc", "val_loss", "test_acc", "test_loss", "configuration"]
    assert adam.split()[:4] == ["3", "0.9000", "±", "0.0200"] and adam.endswith("optimizer=adam")
    assert sgd.split()[:4] == ["2/3", "0.4500", "±", "0.0707"] and sgd.endswith("optimizer=sgd")
    code, out, _ = run_main(capsys, "--tracking-uri", tiny_store.uri, "--group", "--format", "json",
                            "--where", "optimizer.name=adam")
    (group,) = json.loads(out)
    assert group["runs"] == 3 and group["final_val_accuracy_mean"] == pytest.approx(0.9)
    assert sorted(group["seeds"].split()) == ["1", "2", "3"]


def test_show_prints_config_final_metrics_state_dataset_model_and_rerun(shared_store, capsys):
    store, ids = shared_store
    code, out, _ = run_main(capsys, "show", ids["wide"], "--tracking-uri", store.uri)
    assert code == 0
    lines = out.splitlines()
    fields = dict(line.split(None, 1) for line in lines[: lines.index("")])
    assert fields["run"] == ids["wide"] and fields["experiment"] == "mnist-exp"
    assert fields["state"] == "COMPLETE (MLflow status FINISHED)"
    assert fields["dataset"] == f"mnist_sample, digest {DIGEST} (train 3600, val 400, test 1000)"
    assert fields["model"] == "-"  # recorded without a model
    assert fields["reproduce"] == f"python -m mnist_exp.rerun {ids['wide']} --tracking-uri {store.uri}"
    config_lines = lines[lines.index("config") + 1: lines.index("final metrics") - 1]
    assert "  model.hidden_units" in "\n".join(config_lines) and "[256, 128]" in "\n".join(config_lines)
    assert not [line for line in config_lines if line.strip().startswith("dataset.")]
    metrics = dict(line.split() for line in lines[lines.index("final metrics") + 1:])
    assert metrics == {"epochs_completed": "1", "final_val_accuracy": "0.9300", "final_val_loss": "0.2500",
                       "test_accuracy": "0.9200"}


def test_show_names_why_a_run_failed(shared_store, capsys):
    store, ids = shared_store
    code, out, _ = run_main(capsys, "show", ids["failed"], "--tracking-uri", store.uri)
    assert "state       FAIL (MLflow status FAILED): TrainingDiverged: loss became nan at epoch 1" in out


def test_diff_prints_only_what_differs_and_says_when_nothing_does(shared_store, capsys):
    store, ids = shared_store
    code, out, _ = run_main(capsys, "diff", ids["sgd"], ids["adam"], ids["wide"], "--tracking-uri", store.uri)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["key", ids["sgd"][:8], ids["adam"][:8], ids["wide"][:8]]
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert rows["optimizer.name"].split() == ["sgd", "adam", "adam"]
    assert rows["final_val_accuracy"].split() == ["0.4500", "0.9100", "0.9300"]
    assert "model.hidden_units" in rows and "batch_size" not in rows and "epochs_completed" not in rows
    assert "dataset.digest" not in rows
    code, out, _ = run_main(capsys, "diff", ids["adam"], ids["other_data"], "--tracking-uri", store.uri)
    assert [line.split() for line in out.splitlines()[1:]] == [["dataset.digest", DIGEST, "f" * 16]]
    code, out, _ = run_main(capsys, "diff", ids["adam"], ids["twin"], "--tracking-uri", store.uri)
    assert (code, out) == (0, "the 2 runs have the same config, dataset and final metrics\n")


@pytest.mark.slow
def test_the_commands_start_without_mlflow_and_fail_in_one_line(tmp_path):
    def runs_command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-X", "importtime", "-m", "mnist_exp.runs", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=120)

    for args in (["--help"], ["show", "--help"], ["diff", "--help"]):
        result = runs_command(*args)
        imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
        assert result.returncode == 0 and "usage: python -m mnist_exp.runs" in result.stdout
        assert not {"mlflow", "tensorflow", "keras"} & imported, args
    missing = f"sqlite:///{tmp_path}/none.db"
    for args in (["--where", "val_accuracy=>1"], ["show", "x" * 32, "--tracking-uri", missing], ["diff", "x"],
                 ["--sort"]):
        result = runs_command(*args)
        errors = [line for line in result.stderr.splitlines() if "|" not in line]  # without -X importtime's lines
        assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), result.stderr


@pytest.mark.slow
def test_a_tracking_server_is_queried_like_a_local_store(sqlite_tracking_server, make_cfg, capsys,  # noqa: F811
                                                          monkeypatch):
    url, _, _ = sqlite_tracking_server
    store = TinyStore(make_cfg, f"mlflow.tracking_uri={url}")
    sgd = store.add("optimizer=sgd", val_accuracy=0.45, test_accuracy=0.44)
    adam = store.add("optimizer=adam", val_accuracy=0.91, test_accuracy=0.9)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the default store of the reading commands
    capsys.readouterr()  # MLflow's "View run at" lines from writing the runs
    code, out, _ = run_main(capsys, "--where", "optimizer.name=adam", "--format", "json")
    assert code == 0 and [run["run_id"] for run in json.loads(out)] == [adam]
    code, out, _ = run_main(capsys, "show", sgd)
    assert code == 0 and f"python -m mnist_exp.rerun {sgd}" in out
    code, out, _ = run_main(capsys, "diff", sgd, adam, "--tracking-uri", url)
    assert code == 0 and "optimizer.name" in out and "final_val_accuracy" in out


def test_options_may_stand_before_the_command(shared_store, capsys):
    store, ids = shared_store
    # `runs --tracking-uri X show RUN` was "unrecognized arguments: show RUN".
    code, out, err = run_main(capsys, "--tracking-uri", store.uri, "show", ids["sgd"])
    assert code == 0 and ids["sgd"] in out, err
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "diff", ids["adam"], ids["twin"])
    assert (code, out) == (0, "the 2 runs have the same config, dataset and final metrics\n")
    code, out, _ = run_main(capsys, "--tracking-uri", store.uri, "--sort", "-run_id", "--where", "optimizer.name=sgd",
                            "list", "--columns", "run_id")
    assert code == 0 and out.splitlines()[1:] == sorted([ids["sgd"], ids["failed"]], reverse=True)
    code, out, err = run_main(capsys, "--where", "optimizer.name=sgd", "show", ids["sgd"], "--tracking-uri", store.uri)
    assert (code, out) == (2, "") and err.startswith("error: unrecognized arguments: --where") and "\n" not in err[:-1]


@pytest.mark.parametrize(("where", "message"), [
    ("name<3", "--where 'name<3': < compares numbers, and name holds text (e.g. 'optimizer="),
    ("optimizer.name>=1", "--where 'optimizer.name>=1': >= compares numbers, and optimizer.name holds text (e.g. "),
])
def test_a_text_key_compared_as_a_number_is_one_line(shared_store, capsys, where, message):
    store, _ = shared_store
    # It matched nothing, without a word.
    code, out, err = run_main(capsys, "--tracking-uri", store.uri, "--where", where)
    assert (code, out) == (2, "") and err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err


def test_csv_export_defuses_formulas_and_keeps_numbers(tiny_store, capsys):
    run_id = tiny_store.add("optimizer=sgd", val_accuracy=0.5)
    client = tiny_store.store.client
    client.update_run(run_id, name="=HYPERLINK(\"http://x\",\"click\")")
    client.log_param(run_id, "note", "@SUM(1+1)*cmd|' /C calc'!A0")
    client.log_param(run_id, "shift", "-0.5")
    client.log_metric(run_id, "delta", -0.25)
    client.set_tag(run_id, "owner", "+1+2")
    code, out, _ = run_main(capsys, "--tracking-uri", tiny_store.uri, "--format", "csv",
                            "--columns", "name,note,shift,delta,owner,optimizer.name")
    (cells,) = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and cells == {"name": "'=HYPERLINK(\"http://x\",\"click\")",
                                   "note": "'@SUM(1+1)*cmd|' /C calc'!A0", "shift": "-0.5", "delta": "-0.25",
                                   "owner": "'+1+2", "optimizer.name": "sgd"}
