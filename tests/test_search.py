"""The Optuna search loop with a fake launcher (no training): counting, resuming, failures, pruning, interrupts."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mnist_exp import config
from mnist_exp.multirun import sweeping
from mnist_exp.multirun.job_context import JobOutcome, StudyLink
from mnist_exp.multirun.search import search, trial_reaper
from mnist_exp.multirun.search.search_checks import check_settings, check_space
from mnist_exp.multirun.search.search_space import make_sampler, make_storage, suggest_overrides
from mnist_exp.multirun.search.trial_reporter import TrialReporter
from mnist_exp.system import interrupts, processes
from mnist_exp.system.errors import ExperimentError, RunPruned
from mnist_exp.tracking import store
from tests.conftest import MODEL_CHOICE_SPACE, SEARCH_SPACE, completing, compose_cfg, load_trials, make_search, value_of


def test_overrides_are_valid_hydra_syntax_for_every_parameter_type():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    overrides = suggest_overrides(trial, SEARCH_SPACE)
    keys = [o.split("=", 1)[0] for o in overrides]
    assert keys == ["optimizer", "optimizer.lr", "batch_size", "model.hidden_units"]
    widths = overrides[3].split("=", 1)[1]
    assert widths.startswith("[") and widths.endswith("]") and " " not in widths
    assert all(16 <= int(w) <= 512 for w in widths[1:-1].split(","))
    assert int(overrides[2].split("=")[1]) % 32 == 0
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert parsed[3].value() == [int(w) for w in widths[1:-1].split(",")]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_conditional_parameter_is_drawn_only_for_the_choice_it_belongs_to(tmp_path, model):
    check_space(MODEL_CHOICE_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"model": model})
    trial = study.ask()
    overrides = suggest_overrides(trial, MODEL_CHOICE_SPACE)
    own, other = ("model.hidden_units", "model.filters") if model == "mlp" else ("model.filters", "model.hidden_units")
    assert [o.split("=", 1)[0] for o in overrides] == ["model", own, "model.dropout"]
    assert overrides[0] == f"model={model}"
    assert not any(name.startswith(other) for name in trial.params)
    composed = compose_cfg(tmp_path, *overrides)
    config.validate(composed)
    assert composed.model.name == model


def test_a_grid_cannot_take_a_conditional_space():
    with pytest.raises(ExperimentError, match="grid needs a search space of categorical parameters only, none of "
                                              "them conditional"):
        make_sampler({"name": "grid"}, {"model": {"type": "categorical", "choices": ["mlp", "cnn"]},
                                        "model.pooling": {"type": "categorical", "choices": ["max", "average"],
                                                          "when": {"model": "cnn"}}})


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "search_space is empty"),
        ({"model": {"type": "categorical", "choices": ["mlp"]},
          "model.filters": {"type": "layers", "low": 8, "high": 32, "when": "cnn"}},
         "model.filters.when must map earlier parameters to their choices"),
        ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.001}}, "inverted bounds: low=0.1 > high=0.001"),
        ({"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale, so low must be > 0"),
        ({"x": {"type": "normal"}}, "type='normal' is invalid"),
        ({"x": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
        ({"m": {"type": "layers", "low": 8, "high": 64, "min_layers": 3, "max_layers": 2}}, "min_layers <= max_layers"),
        ({"optimizer.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True, "step": 1e-4}},
         "optimizer.lr takes log or step, not both"),
        ({"model": {"type": "categorical", "choices": ["mlp", "cnn"]},
          "model.filters": {"type": "layers", "low": 8, "high": 32, "wehn": {"model": "cnn"}}},
         "model.filters.wehn is not a setting of a layers parameter: expected type, min_layers, max_layers, low, "
         "high, log, when"),
    ],
)
def test_bad_search_spaces_are_rejected(space, message):
    with pytest.raises(ExperimentError, match=re.escape(message)):
        check_space(space)


CHOICE = {"type": "categorical", "choices": ["mlp", "cnn"]}
POOLING = {"type": "categorical", "choices": ["max", "average"], "when": {"model": "cnn"}}
ACTIVATION = {"type": "categorical", "choices": ["relu", "gelu"], "when": {"model": "mlp"}}
DROPOUT = {"type": "float", "low": 0.0, "high": 0.5}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model": CHOICE, "model.dropout": {**DROPOUT, "when": {"model": "rnn"}}},
         "model.dropout.when.model=rnn can never hold: rnn is not among the choices of model [mlp,cnn]"),
        ({"model": CHOICE, "model.dropout": {**DROPOUT, "when": {"model": ["rnn", "gru"]}}},
         "model.dropout.when.model=[rnn,gru] can never hold: [rnn,gru] are not among the choices of model [mlp,cnn]"),
        ({"model": CHOICE, "model.dropout": {**DROPOUT, "when": {"model": ["cnn", "rnn"]}}},
         "model.dropout.when.model=[cnn,rnn] is invalid: rnn is not among the choices of model [mlp,cnn]"),
        ({"model": CHOICE, "model.dropout": {**DROPOUT, "when": {"model": []}}},
         "model.dropout.when.model=[] can never hold: it names none of the choices of model [mlp,cnn]"),
        ({"model": CHOICE, "model.dropout": {**DROPOUT, "when": {"seed": 1}}},
         "model.dropout.when.seed=1 can never hold: seed is not a parameter of the search space"),
        ({"model.dropout": {**DROPOUT, "when": {"model": "cnn"}}, "model": CHOICE},
         "model.dropout.when.model=cnn can never hold: model is drawn after model.dropout; list it before"),
        ({"model": {**CHOICE, "when": {"model": "cnn"}}},
         "model.when.model=cnn can never hold: a parameter cannot depend on itself"),
        ({"optimizer.lr": {"type": "float", "low": 1e-4, "high": 0.1}, "model.dropout": {**DROPOUT, "when": {
            "optimizer.lr": 0.01}}},
         "model.dropout.when.optimizer.lr=0.01 is invalid: optimizer.lr is a float parameter, and when takes "
         "categorical parameters only"),
        # A condition on a parameter that is itself conditional: both must hold in one trial.
        ({"model": CHOICE, "model.pooling": POOLING,
          "model.dropout": {**DROPOUT, "when": {"model": "mlp", "model.pooling": "max"}}},
         "model.dropout.when={model: mlp, model.pooling: max} can never hold: it asks model=mlp, and model.pooling "
         "is drawn only when model=cnn"),
        ({"model": CHOICE, "model.pooling": POOLING, "model.activation": ACTIVATION,
          "model.dropout": {**DROPOUT, "when": {"model.pooling": "max", "model.activation": "relu"}}},
         "model.dropout.when={model.pooling: max, model.activation: relu} can never hold: model.pooling is drawn "
         "only when model=cnn, and model.activation is drawn only when model=mlp"),
    ],
    ids=["not-a-choice", "no-choice", "one-not-a-choice", "empty", "not-a-parameter", "listed-after", "itself",
         "not-categorical", "excluded-by-its-parameter", "excluded-by-two-parameters"],
)
def test_a_condition_that_can_never_hold_is_one_line_naming_why(space, message):
    """Once accepted silently: the parameter was then never drawn."""
    with pytest.raises(ExperimentError, match=f"^hydra\\.sweeper\\.search_space\\.{re.escape(message)}$"):
        check_settings({"n_trials": 2, "n_jobs": 1, "study_name": "s", "search_space": space})


def test_conditions_that_can_hold_together_are_accepted():
    check_space({"model": CHOICE, "model.pooling": POOLING, "model.activation": ACTIVATION,
                 "model.dropout": {**DROPOUT, "when": {"model": ["mlp", "cnn"], "model.pooling": "max"}},
                 "model.batch_norm": {"type": "categorical", "choices": [False, True], "when": {"model": "cnn"}},
                 "model.filters": {"type": "layers", "low": 8, "high": 32, "when": {"model.batch_norm": True}}})


def test_bad_sampler_and_pruner_names():
    with pytest.raises(ExperimentError, match="sampler.name='cmaes' is invalid"):
        check_settings({"n_trials": 2, "n_jobs": 1, "study_name": "s", "search_space": SEARCH_SPACE,
                        "sampler": {"name": "cmaes"}})
    with pytest.raises(ExperimentError, match="pruner.name='sometimes' is invalid"):
        check_settings({"n_trials": 2, "n_jobs": 1, "study_name": "s", "search_space": SEARCH_SPACE,
                        "pruner": {"name": "sometimes"}})
    with pytest.raises(ExperimentError, match="n_trials=0 is invalid"):
        check_settings({"n_trials": 0, "n_jobs": 1, "study_name": "s", "search_space": SEARCH_SPACE})


def test_each_trial_is_counted_and_asked_for_under_the_storages_lock(tmp_path, monkeypatch):
    """Searches sharing a study (test_search_cli.py: two processes) count the finished and running trials and ask
    for the next one as one step: counted apart, two could each ask for the last trial (7 of n_trials=6 seen)."""
    import contextlib

    held = []
    real_lock = search.storage_lock

    @contextlib.contextmanager
    def watched_lock(url, name):
        with real_lock(url, name):
            held.append(True)
            try:
                yield
            finally:
                held.pop()

    events = []  # ("count" | "ask", whether the storage's lock was held)
    real_get_trials, real_ask = optuna.Study.get_trials, optuna.Study.ask

    def get_trials(study, *args, **kwargs):
        events.append(("count", bool(held)))
        return real_get_trials(study, *args, **kwargs)

    def ask(study, *args, **kwargs):
        events.append(("ask", bool(held)))
        return real_ask(study, *args, **kwargs)

    monkeypatch.setattr(search, "storage_lock", watched_lock)
    monkeypatch.setattr(optuna.Study, "get_trials", get_trials)
    monkeypatch.setattr(optuna.Study, "ask", ask)
    make_search(tmp_path, n_trials=3).run([], completing)
    asks = [i for i, (event, _) in enumerate(events) if event == "ask"]
    assert len(asks) == 3
    for i in asks:  # the ask, and the two counts (finished, running) it was decided on
        assert events[i - 2:i + 1] == [("count", True), ("count", True), ("ask", True)], events[i - 2:i + 1]


def test_search_runs_until_n_trials_finished_and_finds_the_best(tmp_path, monkeypatch):
    launched = []

    def launch(jobs, first_index):
        launched.extend(jobs)
        return completing(jobs, first_index)

    result = make_search(tmp_path, n_jobs=2).run(["data=mnist_sample"], launch)
    assert len(launched) == 5 and all(job.overrides[0] == "data=mnist_sample" for job in launched)
    assert [job.index for job in launched] == [0, 1, 2, 3, 4]
    assert [t.state for t in result.trials] == ["COMPLETE"] * 5
    assert result.best.value == max(t.value for t in result.trials)
    # The best trial's run, rerun from its recorded config; the store named unless it is the default one.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # MLflow sets it in the sweeper
    best_run = f"run-of-trial-{result.best.number}"
    assert result.retrain_command(store.default_uri()) == f"python -m mnist_exp.rerun {best_run}"
    assert result.retrain_command("http://mlflow.example:5000") == \
        f"python -m mnist_exp.rerun {best_run} --tracking-uri http://mlflow.example:5000"
    assert result.retrain_command("http://alice:secret@mlflow.example:5000") == \
        f"python -m mnist_exp.rerun {best_run} --tracking-uri 'http://alice:***@mlflow.example:5000'"


def test_rerun_resumes_and_only_adds_the_missing_trials(tmp_path):
    first = make_search(tmp_path, n_trials=3).run([], completing)
    seen = []

    def count(jobs, first_index):
        seen.extend(jobs)
        return completing(jobs, first_index)

    second = make_search(tmp_path, n_trials=5).run([], count)
    assert len(seen) == 2 and second.ran_now == 2
    assert [t.number for t in second.trials] == [0, 1, 2, 3, 4]
    assert [t.params for t in second.trials[:3]] == [t.params for t in first.trials]
    assert make_search(tmp_path, n_trials=5).run([], lambda *a: pytest.fail("ran again")).ran_now == 0


def test_a_resumed_search_draws_new_points_not_the_first_searchs_again(tmp_path):
    """A seeded sampler starts its draws over in each process; the resumed search once repeated trial 0, 1, ..."""
    first = make_search(tmp_path, n_trials=2).run([], completing)
    resumed = make_search(tmp_path, n_trials=4).run([], completing)
    drawn = [t.params["optimizer.lr"] for t in resumed.trials]
    assert drawn[:2] == [t.params["optimizer.lr"] for t in first.trials]
    assert not set(drawn[2:]) & set(drawn[:2])


def test_failed_and_pruned_trials(tmp_path):
    outcomes = iter([
        JobOutcome("FAIL", reason="TrainingDiverged: loss became nan at epoch 1"),
        RuntimeError("worker crashed"),
        JobOutcome("PRUNED", value=0.99, reason="pruned after epoch 1"),
        JobOutcome("COMPLETE", value=0.9),
        JobOutcome("COMPLETE", value=float("nan")),
        JobOutcome("COMPLETE", value=0.8),
        JobOutcome("COMPLETE", value=0.7),
    ])
    result = make_search(tmp_path, n_trials=4).run([], lambda jobs, first: [next(outcomes) for _ in jobs])
    states = [t.state for t in result.trials]
    assert states == ["FAIL", "FAIL", "PRUNED", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert result.trials[0].reason.startswith("TrainingDiverged") and "worker crashed" in result.trials[1].reason
    assert result.best.value == 0.9 and result.best.state == "COMPLETE"


def test_a_search_that_only_fails_stops(tmp_path):
    result = make_search(tmp_path, n_trials=2, max_failures=3).run(
        [], lambda jobs, first: [JobOutcome("FAIL", reason="boom") for _ in jobs]
    )
    assert [t.state for t in result.trials] == ["FAIL"] * 3 and result.best is None
    assert result.retrain_command() is None


def dead_owner() -> str:
    """The stamp of a process that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = processes.current()
    return processes.Owner(here.host, int(child.stdout), here.pid_namespace, "1").stamp()


def test_trials_left_running_by_a_dead_sweep_are_failed_and_not_counted(tmp_path):
    """A dead sweep's trial becomes FAIL; a live worker's RUNNING trial counts toward n_trials (it will finish)."""
    found = make_search(tmp_path, n_trials=2)
    study = optuna.create_study(storage=found.storage, study_name="test", direction="maximize")
    orphan = study.ask()
    orphan.set_user_attr("owner", dead_owner())
    alive = study.ask()
    alive.set_user_attr("owner", processes.owner())  # this process: still running, must be left alone
    elsewhere = study.ask()  # another container on this host: its own PID namespace, unknowable from here
    here = processes.current()
    elsewhere.set_user_attr("owner", processes.Owner(here.host, 1, "4026000000", "1").stamp())

    result = found.run([], lambda jobs, first: [JobOutcome("COMPLETE", value=0.5) for _ in jobs])
    by_number = {t.number: t for t in result.trials}
    assert by_number[orphan.number].state == "FAIL" and "died" in by_number[orphan.number].reason
    assert by_number[alive.number].state == "RUNNING" and by_number[elsewhere.number].state == "RUNNING"
    assert result.ran_now == 0, "two live RUNNING trials fill n_trials=2"


def test_a_trial_its_process_never_stamped_is_failed_once_it_is_old(tmp_path):
    """SIGKILL between asking for a trial and stamping its owner leaves a RUNNING trial with no owner."""
    found = make_search(tmp_path, n_trials=1)
    study = optuna.create_study(storage=found.storage, study_name="test", direction="maximize")
    unstamped = study.ask()
    storage = make_storage(found.storage)
    started = study.trials[unstamped.number].datetime_start
    assert trial_reaper.fail_abandoned_trials(study, storage, now=started + datetime.timedelta(seconds=1)) == [], \
        "a trial being stamped right now is left alone"
    later = started + trial_reaper.UNSTAMPED_GRACE + datetime.timedelta(seconds=1)
    assert trial_reaper.fail_abandoned_trials(study, storage, now=later) == [unstamped.number]
    assert study.trials[unstamped.number].state.name == "FAIL"


def test_a_search_fails_an_unstamped_trial_at_once_under_the_lock_every_asker_holds(tmp_path):
    """A search asks for a trial and stamps it under the study's lock: holding that lock, a new search knows
    an unstamped trial's process died in between (a SIGKILL right after a trial finished, then the same
    command again, found it RUNNING for two minutes and ran nothing)."""
    from mnist_exp.multirun.search.search_space import locks_storage

    found = make_search(tmp_path, n_trials=2)
    study = optuna.create_study(storage=found.storage, study_name="test", direction="maximize")
    unstamped = study.ask()
    assert locks_storage(found.storage) and not locks_storage("mysql://db/optuna")
    result = found.run([], completing)
    assert [(t.state, t.reason) for t in result.trials if t.number == unstamped.number] == [
        ("FAIL", trial_reaper.DIED_REASON)]
    assert result.ran_now == 2


def test_direction_mismatch_is_an_error(tmp_path):
    make_search(tmp_path, n_trials=1).run([], lambda jobs, first: [JobOutcome("COMPLETE", value=1.0)])
    with pytest.raises(ExperimentError, match="was created to maximize, not minimize"):
        make_search(tmp_path, n_trials=1, direction="minimize", metric="val_loss").open_study()


def test_reporter_in_a_job_prunes_through_the_shared_storage(tmp_path):
    found = make_search(tmp_path, n_trials=1, pruner={"name": "threshold", "lower": 0.5})
    pruned = {}

    def job(jobs, first_index):
        # What a worker process does: find its trial from its JobContext, report, get stopped.
        link = StudyLink(found.storage, found.study_name, "val_accuracy", {"name": "threshold", "lower": 0.5})
        reporter = TrialReporter.connect(link, jobs[0].number)
        reporter(1, {"val_accuracy": 0.7})
        with pytest.raises(RunPruned, match="pruned after epoch 2: val_accuracy=0.3000"):
            reporter(2, {"val_accuracy": 0.3})
        pruned["number"] = reporter.number
        return [JobOutcome("PRUNED")]

    result = found.run([], job)
    assert result.trials[0].state == "PRUNED" and pruned["number"] == 0
    assert load_trials(found)[0].intermediate_values == {1: 0.7, 2: 0.3}


def test_concurrent_slots_do_not_wait_for_each_other(tmp_path):
    """Trial 0 holds its slot until the other five trials have run in the other slot: with a batch barrier
    between the slots they never would, and trial 0 gives up and fails."""
    others_done, lock, ended = threading.Event(), threading.Lock(), []

    def launch(jobs, first_index):
        (job,) = jobs
        if job.index == 0:
            if not others_done.wait(timeout=120):
                return [JobOutcome("FAIL", reason="the other slot waited for this one")]
        with lock:
            ended.append(job.index)
            if len(ended) == 5:
                others_done.set()
        return [JobOutcome("COMPLETE", value=value_of(job))]

    result = make_search(tmp_path, n_trials=6, n_jobs=2).run([], launch, concurrent=True)
    assert sorted(t.number for t in result.trials) == list(range(6)) and result.ran_now == 6
    assert all(t.state == "COMPLETE" for t in result.trials), [t.reason for t in result.trials]
    assert ended[-1] == 0


# --- interrupts at every moment of the loop ---------------------------------------------------------------


def interrupt_now() -> None:
    os.kill(os.getpid(), signal.SIGINT)


MOMENTS = ["while asking", "during a trial", "while telling", "between trials", "an error on the way out"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_an_interrupt_at_any_moment_leaves_no_running_trial_and_a_rerun_completes(
    tmp_path, monkeypatch, signals_handled, moment
):
    found = make_search(tmp_path, n_trials=3)
    calls = {"ask": 0, "tell": 0}
    real_suggest, real_tell = search.suggest_overrides, search._tell

    def suggest(trial, space):  # inside the ask: after study.ask(), before the trial is recorded as ours
        calls["ask"] += 1
        if moment == "while asking" and calls["ask"] == 2:
            interrupt_now()
        return real_suggest(trial, space)

    def tell(study, trial, returned):
        calls["tell"] += 1
        if moment == "while telling" and calls["tell"] == 1:
            interrupt_now()
        state = real_tell(study, trial, returned)
        if moment == "between trials" and calls["tell"] == 1:
            interrupt_now()
        return state

    def launch(jobs, first_index):
        if moment == "during a trial" and jobs[0].index == 1:
            interrupt_now()
        if moment == "an error on the way out" and jobs[0].index == 1:
            # What the launcher raised once in CI after Ctrl-C: the trial's reason must still say interrupted.
            with contextlib.suppress(KeyboardInterrupt):  # dropped, as in a garbage-collector callback
                interrupt_now()
            raise AttributeError("'NoneType' object has no attribute 'cfg'")
        return completing(jobs, first_index)

    monkeypatch.setattr(search, "suggest_overrides", suggest)
    monkeypatch.setattr(search, "_tell", tell)
    with pytest.raises(KeyboardInterrupt):
        found.run([], launch)
    states = [t.state.name for t in load_trials(found)]
    assert "RUNNING" not in states and states[0] == "COMPLETE", states
    assert not interrupts.requested(), "the search's interrupt is forgotten when it ends"

    monkeypatch.setattr(search, "suggest_overrides", real_suggest)
    monkeypatch.setattr(search, "_tell", real_tell)
    resumed = make_search(tmp_path, n_trials=3).run([], completing)
    assert [t.state for t in resumed.trials].count("COMPLETE") == 3
    assert all(t.reason == search.INTERRUPTED_REASON for t in resumed.trials if t.state == "FAIL")


@pytest.mark.parametrize(("launcher", "kind"), [("basic", "in-process"), ("joblib", "joblib"), ("ray_cluster", "ray")])
def test_each_launcher_config_is_recognised(launcher, kind):
    from hydra import compose, initialize_config_dir

    from mnist_exp.multirun import sweeping
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert sweeping.launcher_kind(config) == kind


@pytest.mark.parametrize("name", ["../../x", "/abs", "..", "a/b", ""])
def test_a_study_name_is_a_name_never_a_path(name):
    """The study name is also the folder of the search's plots under runs_dir/optuna."""
    with pytest.raises(ExperimentError, match="hydra.sweeper.study_name=.* is invalid: expected a name"):
        check_settings({"n_trials": 2, "n_jobs": 1, "study_name": name, "search_space": SEARCH_SPACE})


def test_searches_starting_together_on_a_new_storage_create_it_once(tmp_path):
    """Two searches on one new SQLite storage once collided creating its tables (a unique-constraint error)."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    start, errors = threading.Barrier(6), []

    def open_storage():
        start.wait()
        try:
            make_storage(url)
        except Exception as error:  # what the race raised
            errors.append(error)

    threads = [threading.Thread(target=open_storage) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []


def test_of_searches_starting_together_on_a_new_study_only_the_one_that_created_it_says_new(tmp_path, capsys):
    """Once every one of them said `New study`: each saw a study without trials."""
    searches = [make_search(tmp_path, sampler={"name": "random"}) for _ in range(4)]
    start, errors = threading.Barrier(len(searches)), []

    def open_study(found: search.Search) -> None:
        start.wait()
        try:
            found.open_study()
        except Exception as error:  # what the race raised
            errors.append(error)

    threads = [threading.Thread(target=open_study, args=(found,)) for found in searches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for found in searches:
        sweeping.announce_search(found, SimpleNamespace(run_id="parent-run"))
    lines = capsys.readouterr().out.splitlines()
    where = f"study test (sqlite:///{tmp_path}/optuna.db)"
    assert sorted(lines) == [f"New {where}: 5 trials to run; MLflow parent run parent-run"] + [
        f"Resuming {where}: it holds 0 finished trials (0 COMPLETE, 0 PRUNED), 0 FAIL; 5 more to reach n_trials=5; "
        "MLflow parent run parent-run"] * 3


def test_an_unusable_storage_is_one_line(tmp_path):
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(ExperimentError, match=r"^cannot use the Optuna storage sqlite:///.*notes\.db: "):
        make_storage(f"sqlite:///{tmp_path / 'notes.db'}")


def test_a_failing_storage_ends_the_search_in_one_line_with_no_trial_running(tmp_path, monkeypatch):
    found = make_search(tmp_path, n_trials=3)
    real_tell, calls = search._tell, []

    def tell_failing_once(study, trial, returned):
        calls.append(trial.number)
        if len(calls) == 2:
            raise RuntimeError("database is locked")
        return real_tell(study, trial, returned)

    monkeypatch.setattr(search, "_tell", tell_failing_once)
    with pytest.raises(ExperimentError, match="^the search stopped: RuntimeError: database is locked$"):
        found.run([], completing)
    states = [t.state.name for t in load_trials(found)]
    assert states == ["COMPLETE", "FAIL"], states


def test_two_searches_reaping_the_same_dead_trial_do_not_collide(tmp_path, monkeypatch):
    found = make_search(tmp_path, n_trials=1)
    study = optuna.create_study(storage=found.storage, study_name="test", direction="maximize")
    orphan = study.ask()
    orphan.set_user_attr("owner", dead_owner())
    stale = study.get_trials(deepcopy=True)  # what a second search listed before the first failed it
    storage = make_storage(found.storage)
    assert trial_reaper.fail_abandoned_trials(study, storage) == [orphan.number]
    monkeypatch.setattr(study, "get_trials", lambda *args, **kwargs: stale)
    assert trial_reaper.fail_abandoned_trials(study, storage) == []


def test_a_trial_the_sweep_ended_stops_its_run_as_killed(tmp_path):
    found = make_search(tmp_path, n_trials=1)
    study = found.open_study()
    trial = study.ask()
    reporter = TrialReporter.connect(StudyLink(found.storage, "test", "val_accuracy", {"name": "none"}), trial.number)
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # what the sweep does on Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        reporter(1, {"val_accuracy": 0.5})


def test_a_study_reused_with_another_space_is_refused_before_any_trial(tmp_path):
    """Once a 56-line traceback mid-trial (Optuna refuses changed categorical choices), a trial left RUNNING;
    then a line naming only the parameters that differ, not how."""
    make_search(tmp_path, n_trials=1).run([], completing)
    changed = {**SEARCH_SPACE, "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]}}
    launched = []
    with pytest.raises(ExperimentError) as refused:
        make_search(tmp_path, n_trials=2, space=changed).run([], lambda jobs, first: launched.extend(jobs))
    assert str(refused.value) == (
        f"study test in sqlite:///{tmp_path}/optuna.db was created with another search space (the study's -> this "
        "search's: optimizer: choices [sgd,adam] -> [sgd,adamw]); search it with its own space, or choose another "
        "hydra.sweeper.study_name"
    )
    assert launched == [] and [t.state.name for t in load_trials(make_search(tmp_path))] == ["COMPLETE"]
    other = {key: spec for key, spec in SEARCH_SPACE.items() if key != "model.hidden_units"}
    other["model.dropout"] = {"type": "float", "low": 0.0, "high": 0.5}
    other["batch_size"] = {"type": "int", "low": 32, "high": 128, "step": 32, "when": {"optimizer": "sgd"}}
    other["optimizer.lr"] = {"type": "categorical", "choices": [0.001, 0.01]}
    with pytest.raises(ExperimentError, match=re.escape(
        "(the study's -> this search's: batch_size: high 256 -> 128, when unset -> {optimizer: sgd}; "
        "model.dropout: added {type: float, low: 0.0, high: 0.5}; "
        "model.hidden_units: removed (was {type: layers, min_layers: 1, max_layers: 3, low: 16, high: 512, "
        "log: true}); optimizer.lr: {type: float, low: 0.0001, high: 0.1, log: true} -> "
        "{type: categorical, choices: [0.001,0.01]}); "
    )):
        make_search(tmp_path, space=other).open_study()
    make_search(tmp_path, n_trials=2).run([], completing)  # the same space resumes
    assert [t.state.name for t in load_trials(make_search(tmp_path))] == ["COMPLETE", "COMPLETE"]
