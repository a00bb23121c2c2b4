"""Which jobs a grid sweep runs (repeats, resuming) and which sweep it is; the CLI side is in test_cli.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mnist_exp.config.plan import resolve
from mnist_exp.multirun import grid_jobs
from mnist_exp.multirun.parent_run import MultirunParent
from mnist_exp.system.errors import ExperimentError
from mnist_exp.tracking import run_tags
from tests.conftest import compose_cfg


def test_a_sweep_is_named_by_its_overrides_in_any_order_or_by_its_name():
    key = grid_jobs.sweep_key(["optimizer=sgd,adam", "epochs=1"], None)
    assert key == grid_jobs.sweep_key(["epochs=1", "optimizer=sgd,adam"], None)
    assert key != grid_jobs.sweep_key(["optimizer=sgd,adam", "epochs=2"], None)
    named = grid_jobs.sweep_key(["optimizer=sgd,adam"], "lr-study")
    assert named == grid_jobs.sweep_key(["optimizer=sgd,adam,rmsprop", "epochs=3"], "lr-study") != key


def test_repeats_become_one_job_per_seed():
    assert grid_jobs.repeated(["optimizer=sgd"], 1, 42) == [["optimizer=sgd"]]
    assert grid_jobs.repeated(["seed=7", "optimizer=sgd", "repeats=3"], 3, 7) == [
        ["optimizer=sgd", "repeats=3", "seed=7"],
        ["optimizer=sgd", "repeats=3", "seed=8"],
        ["optimizer=sgd", "repeats=3", "seed=9"],
    ]


def test_a_plan_repeats_jobs_and_leaves_out_the_configs_that_finished(tmp_path):
    def compose(overrides):
        return compose_cfg(tmp_path / "runs", *overrides)

    batch = [["optimizer=sgd", "repeats=2"], ["optimizer=adam"], ["optimizer=adam", "repeats=abc"]]
    everything = grid_jobs.GridPlan(compose).jobs(batch)
    assert everything == [["optimizer=sgd", "repeats=2", "seed=42"], ["optimizer=sgd", "repeats=2", "seed=43"],
                          ["optimizer=adam"], ["optimizer=adam", "repeats=abc"]], "a bad value fails in its job"

    finished = {run_tags.config_digest(compose(job)): f"run{i}" for i, job in enumerate(everything[1:3])}
    plan = grid_jobs.GridPlan(compose, done=finished)
    assert plan.jobs(batch) == [everything[0], everything[3]] and plan.skipped == 2


def run(digest: str | None, status: str, started: int, state: str = ""):
    tags = {run_tags.STATE_TAG: state or {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(status, status)}
    if digest:
        tags[run_tags.CONFIG_DIGEST_TAG] = digest
    return SimpleNamespace(info=SimpleNamespace(run_id=f"{digest}-{status}-{started}", status=status,
                                                start_time=started), data=SimpleNamespace(tags=tags))


def test_each_job_counts_once_by_its_best_attempt():
    attempts = [run("a", "FAILED", 1), run("a", "FINISHED", 2), run("b", "FINISHED", 3), run("b", "KILLED", 4),
                run("c", "KILLED", 5), run("c", "FAILED", 6), run(None, "FINISHED", 7), run(None, "FINISHED", 8)]
    counted = {r.info.run_id for r in grid_jobs.counted(attempts)}
    assert counted == {"a-FINISHED-2", "b-FINISHED-3", "c-FAILED-6", "None-FINISHED-7", "None-FINISHED-8"}
    assert grid_jobs.finished_digests(attempts) == {"a": "a-FINISHED-2", "b": "b-FINISHED-3"}


def test_the_same_sweep_continues_its_parent_run_unless_told_not_to(make_cfg):
    cfg = make_cfg("data=mnist_sample")
    first = MultirunParent.open(cfg, resolve(cfg), ["optimizer=sgd,adam"], "key-1", resume=True)
    with pytest.raises(ExperimentError, match="is still running, in process"):
        MultirunParent.open(cfg, resolve(cfg), ["optimizer=sgd,adam"], "key-1", resume=True)
    first.close_grid()
    again = MultirunParent.open(cfg, resolve(cfg), ["optimizer=sgd,adam"], "key-1", resume=True)
    assert again.run_id == first.run_id
    client = again.store.client
    parent = client.get_run(again.run_id)
    assert parent.info.status == "RUNNING" and run_tags.STATE_TAG not in parent.data.tags
    again.close_grid()
    assert client.get_run(again.run_id).info.status == "FINISHED"
    assert MultirunParent.open(cfg, resolve(cfg), ["optimizer=sgd,adam"], "key-1", resume=False).run_id != first.run_id
    assert MultirunParent.open(cfg, resolve(cfg), ["optimizer=sgd"], "key-2", resume=True).run_id != first.run_id
