"""The exception types users see, and the one way an error reaches them: a line on stderr and an exit code."""

from __future__ import annotations

import sys
from typing import NoReturn

# Exit codes: bad input or an unusable environment; some jobs of a sweep failed; Ctrl-C or `kill`.
BAD_INPUT = 2
JOBS_FAILED = 1
INTERRUPTED = 130


class ExperimentError(Exception):
    """Bad input or an unusable environment; the CLI prints it as one line and exits 2."""


class TrainingDiverged(ExperimentError):
    """The loss became NaN or infinite; the run is recorded as FAILED with this reason."""


class ModelCannotLearn(ExperimentError):
    """Training never reached `min_train_accuracy` (the overfit check, debug=overfit); the run is recorded
    as FAILED with this reason."""


class StoreFailed(ExperimentError):
    """The MLflow store stopped taking writes during a run (a server gone, a file made read-only or deleted);
    what was written stays, and the run is ended FAILED if the store still takes that."""


class RunPruned(Exception):
    """An Optuna pruner stopped the run early: recorded as FINISHED with state PRUNED, not as a failure."""


def report(message: str, code: int = BAD_INPUT) -> int:
    """Print `error: message` on stderr; return `code` (for a command's main() that returns its exit code)."""
    from mnist_exp.credentials import mask

    print(f"error: {mask(message)}", file=sys.stderr)
    return code


def exit_with(message: str, code: int = BAD_INPUT) -> NoReturn:
    """Print `error: message` on stderr and leave with `code`."""
    sys.exit(report(message, code))


def first_line(text: str) -> str:
    """The first non-blank line of an error text: what a one-line report shows of a library's message."""
    return (str(text).strip().splitlines() or [""])[0]


def root_cause(error: BaseException) -> str:
    """The first line of the innermost cause: the driver's or the socket's words, not a wrapper's preamble."""
    while error.__cause__ is not None and first_line(str(error.__cause__)):
        error = error.__cause__
    return first_line(str(error))
