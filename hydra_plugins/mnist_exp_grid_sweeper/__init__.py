"""mnist-exp's grid sweeper for Hydra: `-m key=a,b` sweeps grouped under one MLflow parent run."""
