"""Runs a dead process left RUNNING: found at the next start on the store and marked KILLED, by the run writer
(mnist_exp.tracking.run_record) and the sweep parent (mnist_exp.multirun.parent_run) alike."""

from __future__ import annotations

import logging

from mnist_exp.system.processes import is_dead
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.store import Store

log = logging.getLogger(__name__)


def kill_abandoned_runs(store: Store) -> list[str]:
    """Mark KILLED the RUNNING runs of the store's experiment (the one this run or sweep writes to) whose process
    is gone (SIGKILL, a lost worker), and FAILED the models they were still saving (PENDING), which `predict`
    then refuses. Other experiments are left to their own next start: a run does not read every experiment
    of a shared store."""
    from mnist_exp.tracking.logged_models import fail_unfinished_models

    running = store.client.search_runs(
        [store.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000
    )
    abandoned = [run for run in running if is_dead(run.data.tags.get(run_tags.OWNER_TAG, ""))]
    for run in abandoned:
        run_id = run.info.run_id
        store.client.set_tag(run_id, run_tags.FAILURE_TAG, "its process died without ending the run")
        store.client.set_tag(run_id, run_tags.STATE_TAG, "KILLED")
        fail_unfinished_models(store.client, run.info.experiment_id, run_id)
        store.client.set_terminated(run_id, "KILLED")
    if abandoned:
        log.warning("marked KILLED %d runs left RUNNING by processes that died", len(abandoned))
    return [run.info.run_id for run in abandoned]
