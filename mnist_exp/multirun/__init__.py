"""`python -m mnist_exp -m ...`: the sweeping process (the parent run, grid resume, the Hydra sweepers' shared
side) and each job's side (its context, its worker process). Searches live in multirun.search."""
