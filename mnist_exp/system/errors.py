"""The exception types users see, and the one way an error reaches them: a line on stderr and an exit code."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

from mnist_exp.system.redaction import mask

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


class OutOfMemory(ExperimentError):
    """Memory ran out while the run trained or saved its model (a model or batch too large for what the process
    may use, which the check before training did not foresee); the run is recorded as FAILED with this reason."""


class StoreFailed(ExperimentError):
    """The MLflow store stopped taking writes during a run (a server gone, a file made read-only or deleted);
    what was written stays, and the run is ended FAILED if the store still takes that."""


class RunPruned(Exception):
    """An Optuna pruner stopped the run early: recorded as FINISHED with state PRUNED, not as a failure."""


def report(message: str, code: int = BAD_INPUT) -> int:
    """Print `error: message` on stderr; return `code` (for a command's main() that returns its exit code)."""
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


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says memory ran out: Python's MemoryError (C++'s std::bad_alloc reaches Python as one),
    TensorFlow's ResourceExhaustedError ("OOM when allocating tensor"), or XLA's RESOURCE_EXHAUSTED (JAX)."""
    if isinstance(error, MemoryError):
        return True
    if any(cls.__name__ == "ResourceExhaustedError" for cls in type(error).__mro__):
        return True
    text = str(error)
    return text.startswith("RESOURCE_EXHAUSTED") or "std::bad_alloc" in text


@contextlib.contextmanager
def out_of_memory_is_a_failure(doing: str) -> Iterator[None]:
    """Turn running out of memory while `doing` (e.g. "training model=mlp (...)") into OutOfMemory: one line, exit 2,
    the run FAILED with the reason."""
    try:
        yield
    except Exception as error:
        if isinstance(error, ExperimentError) or not is_out_of_memory(error):
            raise
        raise OutOfMemory(f"out of memory {doing}: {_what_ran_out(error)}; use smaller layers or batches") from None


def _what_ran_out(error: BaseException) -> str:
    """TensorFlow's allocation that failed ("OOM when allocating tensor with shape[65536,65536] and type float"),
    without the op's device path; else the error's type and first line."""
    text = str(error)
    allocation = re.search(r"OOM when allocating tensor with shape\[[^\]]*\] and type \w+", text)
    if allocation:
        return allocation.group(0)
    line = first_line(re.sub(r"\{\{[^}]*\}\}\s*", "", text))[:200]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
