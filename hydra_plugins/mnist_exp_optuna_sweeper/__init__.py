"""mnist-exp's Optuna sweeper for Hydra: resumable studies, pruning across worker processes."""
