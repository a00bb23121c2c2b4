"""Ctrl-C and SIGTERM: remembered for the work they interrupt, forgotten after it, held back while a write completes."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest
from mlflow import MlflowClient

from mnist_exp import experiment
from mnist_exp.config.paths import tracking_uri
from mnist_exp.system import interrupts
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_record import RunContext


def test_a_deferred_block_completes_and_the_interrupt_follows(signals_handled):
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.scope():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the rest of the block")
    assert done == ["the rest of the block"]


def test_an_interrupt_is_forgotten_when_its_outermost_scope_ends(signals_handled):
    with interrupts.scope():
        with pytest.raises(KeyboardInterrupt), interrupts.scope():
            os.kill(os.getpid(), signal.SIGINT)
        assert interrupts.requested(), "still inside the outer scope: a sweep between its jobs"
    assert not interrupts.requested()
    interrupts.check()


@pytest.mark.slow  # two trainings
def test_a_long_lived_process_runs_normally_after_one_interrupted_run(make_cfg, npz_file, signals_handled):
    """A notebook calling experiment.run: one run stopped by Ctrl-C, the next one trains all its epochs."""
    cfg = make_cfg(f"data.path={npz_file}", "epochs=3", "batch_size=64", "model.hidden_units=[16]",
                   "mlflow.log_model=false", "plots=false")

    def interrupt_at_first_epoch(epoch, metrics):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, context=RunContext(on_epoch=interrupt_at_first_epoch))
    outcome = experiment.run(cfg)
    assert outcome["epochs_completed"] == 3

    client = MlflowClient(tracking_uri(cfg))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert [r.data.tags[run_tags.STATE_TAG] for r in runs] == ["KILLED", "COMPLETE"]


def test_an_error_raised_on_the_way_out_of_an_interrupt_ends_the_run_killed(make_cfg, npz_file, signals_handled):
    """Code that Ctrl-C broke off midway can fail afterwards (once an AttributeError did): the run is interrupted,
    KILLED, and the interrupt is what its caller sees, not a failure."""
    cfg = make_cfg(f"data.path={npz_file}", "epochs=2", "batch_size=64", "model.hidden_units=[16]",
                   "mlflow.log_model=false", "plots=false")

    def fail_after_a_dropped_interrupt(epoch, metrics):
        with contextlib.suppress(KeyboardInterrupt):  # dropped, as Python drops one in a garbage-collector callback
            os.kill(os.getpid(), signal.SIGINT)
        raise AttributeError("'NoneType' object has no attribute 'numpy'")

    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, context=RunContext(on_epoch=fail_after_a_dropped_interrupt))
    client = MlflowClient(tracking_uri(cfg))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert (run.info.status, run.data.tags[run_tags.STATE_TAG]) == ("KILLED", "KILLED")
    assert run_tags.FAILURE_TAG not in run.data.tags


def test_a_second_signal_while_the_work_stops_is_absorbed(signals_handled):
    """Ctrl-C pressed again while the first one is recording the run KILLED must not break off that record."""
    recorded = []
    with pytest.raises(KeyboardInterrupt), interrupts.scope():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            recorded.append("KILLED")
    assert recorded == ["KILLED"]
    assert not interrupts.requested()


def test_a_job_in_a_worker_stops_when_the_sweep_ends_its_trial(signals_handled):
    """What a joblib worker does when the sweeping process told its trial FAIL: the job is interrupted."""
    from mnist_exp.multirun import sweep_worker

    trial_ended = threading.Event()
    with pytest.raises(KeyboardInterrupt), sweep_worker.watched_job(os.getppid(), trial_ended.is_set):
        trial_ended.set()
        while True:  # training, until the watcher interrupts it
            interrupts.check()
            trial_ended.wait(0.05)
    assert not interrupts.requested()
