"""The tags and names mnist-exp puts on MLflow runs: written by the recorders, read by the queries."""

from __future__ import annotations

from collections.abc import Sequence

from mnist_exp.credentials import mask

FAILURE_TAG = "mnist_exp.failure"          # why a run FAILED or was KILLED
PRUNED_TAG = "mnist_exp.pruned"            # why the pruner stopped it
OVERRIDES_TAG = "mnist_exp.overrides"      # the command-line overrides, space-separated
SWEEP_TAG = "mnist_exp.sweep"              # "true" on a multirun's parent run
STATE_TAG = "mnist_exp.state"              # COMPLETE, PRUNED, FAIL or KILLED (Optuna's words, for runs too)
OWNER_TAG = "mnist_exp.owner"              # the process that runs it (mnist_exp.processes)
FALLBACK_TAG = "mnist_exp.dataset_fallback"
GIT_DIRTY_TAG = "mnist_exp.git_dirty"
TRIAL_NUMBER_TAG = "optuna.trial_number"
MAX_TAG_LENGTH = 5000
MAX_RUN_NAME_LENGTH = 250


def run_name(overrides: Sequence[str]) -> str:
    """A readable name from the command-line overrides: 'optimizer=sgd epochs=10', or 'defaults'."""
    shown = [mask(o) for o in overrides if not o.lstrip("+~").startswith(("hydra.", "mlflow.", "runs_dir="))]
    return (" ".join(shown) or "defaults")[:MAX_RUN_NAME_LENGTH]
