"""Steady-state training time per epoch of the default model on full Fashion-MNIST, through the
product's own train_and_evaluate, next to the floor this machine's float32 GEMM rate allows.

    python benchmarks/bench_training.py [--epochs 3] [overrides ...]   e.g. backend=jax jit_compile=false

Prints one JSON line. Keras picks its backend once per process, so benchmarks/run.py starts one
process per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mnist_exp.data import load_dataset
from mnist_exp.training.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent

HIDDEN = 512
CLASSES = 10
INPUTS = 784


def gemm_rate(batch: int, repeats: int = 200) -> float:
    """float32 FLOP/s of numpy matmul at the model's largest shape (batch x 784 @ 784 x 512)."""
    rng = np.random.default_rng(0)
    a = rng.random((batch, INPUTS), dtype=np.float32)
    b = rng.random((INPUTS, HIDDEN), dtype=np.float32)
    for _ in range(10):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * batch * INPUTS * HIDDEN * repeats / (time.perf_counter() - started)


def training_flops(examples: int) -> float:
    """Matrix-multiply FLOPs of one epoch: forward, then weight and input gradients (none for the input)."""
    forward = 2 * (INPUTS * HIDDEN + HIDDEN * CLASSES)
    backward = 2 * (INPUTS * HIDDEN) + 2 * 2 * (HIDDEN * CLASSES)
    return examples * (forward + backward)


def product_model(overrides: list[str]):
    """(config, dataset, compiled model, batches) for the full Fashion-MNIST as a run sets them up
    (mnist_exp.training.train's backend preparation and model), for benchmarks that drive fit() themselves."""
    from hydra import compose, initialize_config_dir

    from mnist_exp.config.paths import runs_dir
    from mnist_exp.training.pipeline import InMemoryBatches
    from mnist_exp.training.train import compiled_model, prepared_backend

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=fashion_mnist", *overrides])
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=runs_dir(cfg) / "cache")
    prepared_backend(cfg)
    return cfg, dataset, compiled_model(cfg, dataset), InMemoryBatches(dataset, cfg.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. backend=jax jit_compile=true")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=fashion_mnist", f"epochs={args.epochs}", *args.overrides])
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=ROOT / "runs" / "cache")
    epochs: list[dict[str, float]] = []
    # The product's own training function: what is measured is what users run.
    train_and_evaluate(cfg, dataset, on_epoch=lambda epoch, metrics: epochs.append(metrics))
    # Epoch 1 includes tracing/compilation; later epochs are the steady state.
    steady = [e["samples_per_second"] for e in epochs[1:]] or [epochs[0]["samples_per_second"]]
    samples_per_s = float(np.median(steady))
    train_s = len(dataset.y_train) / samples_per_s
    floor = training_flops(len(dataset.y_train)) / gemm_rate(cfg.batch_size)
    print(json.dumps({
        "overrides": " ".join(args.overrides) or "defaults", "epoch_s": train_s, "samples_per_s": samples_per_s,
        "first_epoch_s": len(dataset.y_train) / epochs[0]["samples_per_second"],
        # The fastest steady epoch: what the code does when the (shared, noisy) machine leaves it alone.
        "best_epoch_s": len(dataset.y_train) / max(steady),
        "gemm_floor_s": floor, "fraction_of_floor": floor / train_s,
    }))


if __name__ == "__main__":
    main()
