"""Where a steady TensorFlow epoch of the default model goes, by op type, next to the GEMM floor.

    .venv/bin/python benchmarks/profile_tf_epoch.py [--epochs 2] [overrides ...]

Trains the default model on the full Fashion-MNIST as a run does (benchmarks/bench_training.py:product_model:
mnist_exp.training.train's backend preparation and model, the product's pipeline), profiles the last epoch with
TensorFlow's profiler, and prints the CPU time of each kind of op (self time, summed over both cores' threads)
as a share of all op time, with the epoch's wall time and the floor this machine's float32 GEMM rate allows
(benchmarks/bench_training.py). Ops of the same kind are
grouped (GROUPS): the matrix multiplies, the elementwise math around them, the loss, the optimizer's variable
updates, the input gather and pipeline, and control flow.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

# A sibling script: `python benchmarks/profile_tf_epoch.py` puts this folder first on sys.path.
from bench_training import gemm_rate, product_model, training_flops

ROOT = Path(__file__).resolve().parent.parent

GROUPS = (  # (substring of the op type, group), first match wins; anything else is "other"
    ("MatMul", "matrix multiply"), ("SoftmaxCrossEntropy", "loss"), ("LogSoftmax", "loss"),
    ("Softmax", "elementwise"), ("Relu", "elementwise"), ("BiasAddGrad", "reduction"), ("BiasAdd", "elementwise"),
    ("Assign", "optimizer update"), ("ReadVariable", "variable reads"), ("Gather", "input gather"),
    ("Dataset", "input pipeline"), ("Iterator", "input pipeline"), ("Optional", "input pipeline"),
    ("While", "control flow"), ("If", "control flow"), ("Sum", "reduction"), ("Mean", "reduction"),
    ("ArgMax", "reduction"),
    *((name, "elementwise") for name in ("Mul", "Add", "Sub", "Div", "Sqrt", "Square", "Cast", "Neg", "Log",
                                         "Maximum", "Minimum", "Select", "Equal", "Greater", "Less")),
)


def group_of(op_type: str) -> str:
    return next((group for part, group in GROUPS if part in op_type), "other")


def op_times(xplane: Path) -> dict[str, float]:
    """Self time (us) per op type from the profiler's framework_op_stats tool. TensorFlow exposes the tool only
    through a private module (the one TensorBoard's profile plugin calls); without it the script says so."""
    try:
        from tensorflow.python.profiler.internal import _pywrap_profiler_plugin
    except ImportError as error:
        raise SystemExit(f"this TensorFlow has no profiler plugin module ({error})") from None

    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([str(xplane)], "framework_op_stats", {})
    if not ok:
        raise SystemExit("the profiler produced no op statistics")
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [column["id"] for column in table["cols"]]
    by_type: dict[str, float] = collections.Counter()
    for row in table["rows"]:
        values = dict(zip(columns, (cell.get("v") for cell in row["c"]), strict=False))
        if values.get("host_or_device", "Host") == "Host" and values.get("type") not in (None, "IDLE"):
            by_type[values["type"]] += float(values.get("total_self_time", 0.0))
    return dict(by_type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import tensorflow as tf

    cfg, dataset, model, batches = product_model(args.overrides)
    floor = training_flops(len(dataset.y_train)) / gemm_rate(cfg.batch_size)
    train = batches.train(cfg.batch_size)
    model.fit(train, epochs=args.epochs - 1, verbose=0)  # traced and warm
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        model.fit(train, epochs=1, verbose=0)
        epoch = time.perf_counter() - started
        tf.profiler.experimental.stop()
        (xplane,) = Path(logdir).rglob("*.xplane.pb")
        times = op_times(xplane)
    groups: dict[str, float] = collections.Counter()
    for op_type, micros in times.items():
        groups[group_of(op_type)] += micros
    total = sum(groups.values())
    print(f"Command: `.venv/bin/python benchmarks/profile_tf_epoch.py --epochs {args.epochs}"
          + "".join(f" {o}" for o in args.overrides) + "`")
    print(f"profiled epoch {epoch:.2f} s wall; GEMM floor {floor:.2f} s; epoch / floor {epoch / floor:.2f}; "
          f"op CPU time {total / 1e6:.2f} s")
    print("| op group | CPU s | share of op time |")
    print("|---|---:|---:|")
    for group, micros in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {group} | {micros / 1e6:.2f} | {micros / total:.2f} |")
    top = sorted(times.items(), key=lambda item: -item[1])[:12]
    print("op types, most time first: " + ", ".join(f"{t} ({group_of(t)}) {m / 1e6:.2f} s" for t, m in top))


if __name__ == "__main__":
    main()
