"""`python -m mnist_exp.rerun RUN [overrides]`: a recorded run trained again from its own config.yaml."""

from __future__ import annotations

import pytest

from mnist_exp.commands import rerun
from mnist_exp.system.errors import ExperimentError
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_inputs import log_config
from mnist_exp.tracking.store import connect
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


@pytest.mark.slow  # two trainings, epoch by epoch
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

    rerun_cfg, recorded, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), ["batch_size=64"])
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
    from mnist_exp.config.paths import tracking_uri

    rerun_cfg, _, _ = rerun.prepare(run_id, store_uri(tmp_path / "copy"), [])
    assert tracking_uri(rerun_cfg) == store_uri(tmp_path / "copy")
    assert rerun_cfg.runs_dir == str(tmp_path / "copy"), "a local store's folder is the rerun's runs_dir"
    rerun_cfg, _, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), [])
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
    prepared, _, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), [])
    assert (prepared.repeats, prepared.lr_schedule, prepared.label_smoothing, prepared.data.augment) == (
        1, "constant", 0.0, 0)
    prepared, _, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), ["lr_schedule=cosine", "data.augment=2"])
    assert (prepared.lr_schedule, prepared.data.augment) == ("cosine", 2)
    # A data option's own file lacks data.augment (config.yaml sets it for every dataset).
    prepared, _, _ = rerun.prepare(run_id, store_uri(cfg.runs_dir), ["data=fashion_mnist"])
    assert (prepared.data.name, prepared.data.augment) == ("fashion_mnist", 0)


def recorded_text(cfg, config_text: str | None, overrides_text: str | None = "\n") -> str:
    """A run whose config.yaml (and overrides.txt) hold exactly these texts, as someone with write access to
    the store could leave them; None: the file is not there."""
    store = connect(cfg)
    run = store.client.create_run(store.experiment_id)
    if config_text is not None:
        store.client.log_text(run.info.run_id, config_text, "config.yaml")
    if overrides_text is not None:
        store.client.log_text(run.info.run_id, overrides_text, "overrides.txt")
    store.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def edited(cfg, **changes) -> str:
    """The YAML a run records for `cfg`, with dotted `changes` made to it."""
    from omegaconf import OmegaConf

    from mnist_exp import config

    values = OmegaConf.create(config.plain(cfg))
    for key, value in changes.items():
        OmegaConf.update(values, key.replace("__", "."), value, merge=False)
    return OmegaConf.to_yaml(values)


def test_a_recorded_loader_is_called_only_when_trusted_and_refused_before_any_import(make_cfg, tmp_path,
                                                                                   monkeypatch, capsys):
    """A config.yaml edited to `data.loader: shutil:rmtree` once made a teammate's rerun delete a folder."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    # A module whose import alone leaves a mark: the refusal comes before anything is imported.
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "marking_loader.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef load(path, cache_dir):\n    raise SystemExit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    cfg = make_cfg("data=mnist_sample")
    uri = store_uri(tmp_path / "runs")
    for loader in ("shutil:rmtree", "marking_loader:load"):
        run_id = recorded_text(cfg, edited(cfg, data__loader=loader, data__path=str(victim)))
        assert rerun.main([run_id, "--tracking-uri", uri]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == (f"error: run {run_id}'s config names data.loader={loader}, which no dataset in conf/data/ "
                        f"names: a rerun calls only loaders you trust (if you do: --trust-loader {loader})")
        assert (victim / "keep.txt").read_text() == "precious" and not (tmp_path / "imported").exists()
    # Trusted on the command line, or chosen again by the user, the loader is theirs to call.
    prepared, _, _ = rerun.prepare(run_id, uri, [f"data.path={victim}"], trusted_loaders=["marking_loader:load"])
    assert prepared.data.loader == "marking_loader:load" and not (tmp_path / "imported").exists()
    prepared, _, _ = rerun.prepare(run_id, uri, ["data=mnist_sample"])
    assert prepared.data.loader == "mnist_exp.data.sources:load_mnist_sample"
    assert len(store_client(tmp_path / "runs").search_runs([cfg_experiment_id(cfg)])) == 2, "no run trained"


def cfg_experiment_id(cfg) -> str:
    return connect(cfg).experiment_id


def test_a_recorded_config_names_no_place_on_this_machine(make_cfg, tmp_path):
    """Its runs_dir, hydra node, tracking URI and data.path are never used: the store it was read from and the
    user's overrides decide."""
    cfg = make_cfg("data=mnist_sample")
    elsewhere = tmp_path / "elsewhere"
    text = edited(cfg, runs_dir=str(elsewhere), mlflow__tracking_uri=f"sqlite:///{elsewhere}/mlflow.db")
    run_id = recorded_text(cfg, text + f"hydra:\n  run:\n    dir: {elsewhere}/out\n")
    prepared, _, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), [])
    assert prepared.runs_dir == str(tmp_path / "runs") and prepared.mlflow.tracking_uri is None
    assert "hydra" not in prepared
    prepared, _, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), [f"runs_dir={tmp_path / 'mine'}"])
    assert prepared.runs_dir == str(tmp_path / "mine"), "the user's override wins"

    sample = tmp_path / "digits.csv"
    sample.write_text("0," * 784 + "0\n")
    run_id = recorded_text(cfg, edited(cfg, data__path=str(sample)))
    with pytest.raises(ExperimentError, match=f"run {run_id} read its data from data.path={sample}, and a rerun "
                       "takes no path from a store: name the data again, e.g. python -m mnist_exp.rerun "
                       f"{run_id} --tracking-uri .* data.path={sample}"):
        rerun.prepare(run_id, store_uri(tmp_path / "runs"), [])
    prepared, _, _ = rerun.prepare(run_id, store_uri(tmp_path / "runs"), [f"data.path={sample}"])
    assert prepared.data.path == str(sample)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(12))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "config.yaml cannot be read: it uses a YAML alias (*name), which recorded configs never do"),
        ("epochs: 1\n" + "x" * 300_000, "config.yaml is 300010 bytes, more than a run records (262144)"),
        ("a:\n" + "".join(f"{'  ' * depth}b:\n" for depth in range(1, 40)), "is nested deeper than 32"),
        ("[1, 2", "config.yaml cannot be read: while parsing a flow sequence"),
        ("- 1\n- 2\n", "config.yaml is not a mapping of keys to values"),
        ("seed: ${oc.env:MLFLOW_TRACKING_PASSWORD}\n", "config.yaml has an interpolation at seed="),
        (None, "has no config.yaml to rerun from"),
    ],
    ids=["alias bomb", "too large", "too deep", "not yaml", "not a mapping", "interpolation", "missing"],
)
def test_a_recorded_config_that_a_run_cannot_have_written_is_one_line(make_cfg, tmp_path, capsys, text, message):
    """A 1 kB alias bomb once ran 485 s and reached 3.7 GB; a broken config.yaml was reported as missing."""
    cfg = make_cfg("data=mnist_sample")
    run_id = recorded_text(cfg, text)
    assert rerun.main([run_id, "--tracking-uri", store_uri(tmp_path / "runs")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: run {run_id}") and message in line, line


def test_a_deleted_run_is_not_rerun_and_show_offers_no_rerun_where_it_cannot_work(make_cfg, tmp_path, capsys):
    from mnist_exp.commands import runs

    cfg = make_cfg("data=mnist_sample")
    uri = store_uri(tmp_path / "runs")
    deleted, parent = recorded_run(cfg), recorded_run(cfg, tags={run_tags.SWEEP_TAG: "true"})
    bare = recorded_text(cfg, None, None)
    store_client(tmp_path / "runs").delete_run(deleted)
    assert rerun.main([deleted, "--tracking-uri", uri]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: run {deleted} is deleted; to rerun it, restore it first: ") and \
        line.endswith(f"mlflow runs restore --run-id {deleted}")

    expected = {
        deleted: ("deleted, COMPLETE", "- (cannot be rerun: deleted: restore it first (mlflow runs restore))"),
        parent: ("COMPLETE", "- (cannot be rerun: a sweep's parent run: rerun one of its jobs)"),
        bare: ("COMPLETE", "- (cannot be rerun: it has no config.yaml and no overrides.txt)"),
    }
    for run_id, (state, reproduce) in expected.items():
        assert runs.main(["show", run_id, "--tracking-uri", uri]) == 0
        lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[:8] if line.strip())
        assert lines["state"].startswith(state) and lines["reproduce"] == reproduce, lines
    fine = recorded_run(cfg)
    assert runs.main(["show", fine, "--tracking-uri", uri]) == 0
    assert f"\nreproduce   python -m mnist_exp.rerun {fine} --tracking-uri {uri}\n" in capsys.readouterr().out
    from_a_file = recorded_run(cfg)
    store_client(tmp_path / "runs").log_param(from_a_file, "data.path", str(tmp_path / "my digits.csv"))
    assert runs.main(["show", from_a_file, "--tracking-uri", uri]) == 0
    assert (f"\nreproduce   python -m mnist_exp.rerun {from_a_file} --tracking-uri {uri} "
            f"data.path='{tmp_path / 'my digits.csv'}'\n" in capsys.readouterr().out), "a path is named again"


def test_options_may_come_before_between_or_after_the_run_and_its_overrides(recorded_store, capsys):
    """`rerun RUN --tracking-uri X epochs=1` once printed a usage block."""
    runs_dir, runs = recorded_store
    uri = store_uri(runs_dir)
    for arguments in ([runs["run"], "--tracking-uri", uri, "epochs=0"],
                      ["--tracking-uri", uri, runs["run"], "epochs=0"]):
        assert rerun.main(arguments) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == "error: epochs=0 is invalid: expected an integer from 1 to 100000"
    with pytest.raises(SystemExit) as leaving:
        rerun.main([runs["run"], "--no-such-option"])
    assert leaving.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: unrecognized arguments: --no-such-option (usage: python -m mnist_exp.rerun RUN")
