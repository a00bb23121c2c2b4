"""Configuration-driven MNIST experiments: Hydra configs, Keras 3 MLPs, every run in MLflow.

`mnist_exp.experiment.run(cfg)` is the one entry point: it takes a composed
config and returns the run's metrics. `python -m mnist_exp` is a thin Hydra
shim over it.
"""

__version__ = "0.1.0"
