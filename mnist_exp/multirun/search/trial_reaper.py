"""Trials a dead search left RUNNING: found at the next start and failed, so they no longer count."""

from __future__ import annotations

import datetime

from mnist_exp.system.processes import is_dead

OWNER_ATTR = "owner"  # the trial's user attribute holding its process's stamp (mnist_exp.system.processes)
DIED_REASON = "its sweep process died"
# A RUNNING trial without an owner was asked for by a process that died before stamping it (the two
# writes are milliseconds apart); one this old cannot be in that gap any more.
UNSTAMPED_GRACE = datetime.timedelta(minutes=2)


def fail_abandoned_trials(study, storage, now: datetime.datetime | None = None, asks_locked: bool = False) -> list[int]:
    """Mark FAIL the RUNNING trials whose sweep process has died; returns their numbers.

    A trial stamped with a dead owner, or with none (its process died between asking for it and stamping
    it), is abandoned. `asks_locked`: the caller holds the study's lock, under which every search asks for a
    trial and stamps it (mnist_exp.multirun.search.search), so an unstamped trial is abandoned now; else only
    once UNSTAMPED_GRACE has passed. Trials of live processes, here or elsewhere, are left alone.
    """
    import optuna

    now = now or datetime.datetime.now()
    study_id = storage.get_study_id_from_name(study.study_name)
    abandoned = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        stamp = trial.user_attrs.get(OWNER_ATTR)
        unstamped_long = stamp is None and trial.datetime_start is not None and \
            now - trial.datetime_start > UNSTAMPED_GRACE
        if (stamp is None and asks_locked) or unstamped_long or (stamp is not None and is_dead(str(stamp))):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", DIED_REASON)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another search starting at the same time failed it first
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            abandoned.append(trial.number)
    return abandoned
