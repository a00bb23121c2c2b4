"""The command lines: `python -m mnist_exp`'s arguments, and the runs, rerun, predict and dashboard commands (their
`python -m mnist_exp.<name>` shims stay at the package's top level)."""
