"""An Optuna search: its settings and space checked, its sampler, pruner and storage, the trial loop, the
baseline trial, each trial's reports and pruning, and the result the parent run records."""
