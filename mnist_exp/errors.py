"""The one exception type users see: a message that says what to fix."""


class ExperimentError(Exception):
    """Bad input or an unusable environment; the CLI prints it as one line and exits 2."""


class TrainingDiverged(ExperimentError):
    """The loss became NaN or infinite; the run is recorded as FAILED with this reason."""


class RunPruned(Exception):
    """An Optuna pruner stopped the run early: recorded as FINISHED with state PRUNED, not as a failure."""
