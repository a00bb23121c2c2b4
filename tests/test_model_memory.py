"""The memory check before training: the arithmetic against Keras' own counts, the limits read, the refusal."""

from __future__ import annotations

import itertools
import resource
import subprocess
import sys

import numpy as np
import pytest

from mnist_exp import config
from mnist_exp.config.model_keys import model_spec
from mnist_exp.data import Dataset
from mnist_exp.multirun import sweep_job
from mnist_exp.system import memory_limits
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.memory_limits import GIB, Budget
from mnist_exp.training import model_memory
from mnist_exp.training.model_memory import check_fits, estimate, optimizer_slots, parameter_count
from tests.conftest import CONF_DIR, PROJECT_ROOT, all_runs, compose_cfg, store_client, write_npz

# The limit of the report (`ulimit -v 8000000`, in KiB).
ULIMIT_V = 8_000_000 * 1024
TOO_LARGE = [
    (("model=cnn", "model.dense_units=[65536,65536,65536]"), "model.dense_units=[65536, 65536, 65536] needs about"),
    (("model=cnn", "model.filters=[4096,4096]", "model.kernel_size=28"),
     "model.filters=[4096, 4096] with model.kernel_size=28 needs about"),
    (("model.hidden_units=[65536,65536]",), "model.hidden_units=[65536, 65536] needs about"),
]


def plain_cfg(tmp_path, *overrides: str) -> dict:
    return config.plain(compose_cfg(tmp_path / "runs", *overrides))


def mnist_sized(train: int = 60_000, test: int = 10_000) -> Dataset:
    """A dataset of MNIST's size (zeros: the check looks at shapes, not pixels)."""
    return Dataset(
        name="mnist", source="test", digest="0", class_names=tuple("0123456789"),
        images=np.zeros((train, 784), np.uint8), labels=np.zeros(train, np.uint8), val_examples=train // 10,
        x_test=np.zeros((test, 784), np.uint8), y_test=np.zeros(test, np.uint8),
    )


@pytest.mark.parametrize("model", [
    ["model.hidden_units=[32]"],
    ["model.hidden_units=[64,16]", "model.dropout=0.2"],
    ["model=cnn", "model.filters=[4,8]", "model.dense_units=[16]"],
    ["model=cnn", "model.filters=[3,5]", "model.batch_norm=true", "model.pooling=none", "model.dense_units=[]"],
    ["model=cnn", "model.filters=[6]", "model.kernel_size=5", "model.pooling=average", "model.dense_units=[8,8]",
     "model.dropout=0.1"],
    ["model=cnn", "model.filters=[2,2,2,2,2,2]"],  # pooled down to one pixel, then no further
])
def test_the_parameter_count_is_keras_own(tmp_path, model):
    """The arithmetic follows mnist_exp.training.model's layers: a change there that the estimate misses fails here."""
    from mnist_exp.system.keras_backend import import_keras, select_backend
    from mnist_exp.training.model import build_model

    select_backend("tensorflow")
    import_keras()
    spec = model_spec(plain_cfg(tmp_path, *model)["model"])
    built = build_model(spec, input_dim=784, num_classes=10)
    layers = model_memory.model_layers(spec, 784, 10)
    assert parameter_count(spec) == built.count_params()
    assert sum(layer.trainable for layer in layers) == sum(int(np.prod(w.shape)) for w in built.trainable_weights)


def test_every_model_has_its_arithmetic():
    """A model added to mnist_exp.training.model.MODELS without its layers here would go unchecked before training."""
    from mnist_exp.training.model import MODELS

    assert set(model_memory.LAYERS) == set(MODELS)


@pytest.mark.parametrize("optimizer", [
    ["optimizer=sgd"], ["optimizer=sgd", "optimizer.momentum=0.9"], ["optimizer=rmsprop"],
    ["optimizer=rmsprop", "optimizer.momentum=0.5"], ["optimizer=adam"], ["optimizer=adam", "optimizer.amsgrad=true"],
    ["optimizer=adamw"],
])
def test_the_optimizer_slots_are_keras_own(tmp_path, optimizer):
    from mnist_exp.system.keras_backend import import_keras, select_backend
    from mnist_exp.training.model import build_model, build_optimizer

    select_backend("tensorflow")
    import_keras()
    cfg = plain_cfg(tmp_path, "model.hidden_units=[8]", *optimizer)
    built = build_model(model_spec(cfg["model"]), input_dim=784, num_classes=10)
    keras_optimizer = build_optimizer(cfg["optimizer"])
    keras_optimizer.build(built.trainable_variables)
    slot_values = sum(int(np.prod(v.shape)) for v in keras_optimizer.variables if len(v.shape) > 0)
    assert optimizer_slots(cfg["optimizer"]) * parameter_count(model_spec(cfg["model"])) == slot_values


def _largest_points(search_space: dict):
    """Each combination of the choices that size a model (model, optimizer, batch size, batch norm, pooling), with
    every layer list at its most layers of its widest, and every number at its top."""
    sizing = ("model", "optimizer", "batch_size", "model.batch_norm", "model.pooling")
    choices = {key: spec["choices"] for key, spec in search_space.items()
               if spec["type"] == "categorical" and key in sizing}
    for combination in itertools.product(*choices.values()):
        chosen = dict(zip(choices, combination, strict=True))
        point = {}
        for key, spec in search_space.items():
            if any(chosen.get(k, v) != v for k, v in (spec.get("when") or {}).items()):
                continue  # not drawn for this choice (a CNN's key when the MLP is chosen)
            if key in chosen:
                point[key] = chosen[key]
            elif spec["type"] == "layers":
                point[key] = "[" + ",".join([str(spec["high"])] * spec["max_layers"]) + "]"
            elif spec["type"] in ("float", "int"):
                point[key] = spec["high"]
        yield [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in point.items()]


def _presets() -> list[list[str]]:
    presets = [[], ["model=cnn"]]
    presets += [[f"experiment={path.stem}"] for path in sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    for path in sorted((CONF_DIR / "hparams_search").glob("*.yaml")):
        space = compose_cfg(PROJECT_ROOT / "runs", f"hparams_search={path.stem}", with_hydra=True)
        searched = {key: dict(spec) for key, spec in space.hydra.sweeper.search_space.items()}
        presets += [[f"hparams_search={path.stem}", *point] for point in _largest_points(searched)]
    return presets


@pytest.mark.slow  # every preset and search space composed
def test_the_defaults_every_preset_and_the_largest_trial_of_every_search_fit_easily(tmp_path):
    """Under the very `ulimit -v` the report used, on full MNIST with the run's pictures, each needs at most a
    fraction of what is left beside TensorFlow."""
    budget = Budget(ULIMIT_V, "ulimit -v", memory_limits.FRAMEWORK_ADDRESS_SPACE)
    presets = _presets()
    assert any("model=cnn" in preset for preset in presets) and len(presets) > 20
    for overrides in presets:
        cfg = plain_cfg(tmp_path, *overrides, "plots=true")
        need = check_fits(cfg, mnist_sized(), budget)
        assert need.total < budget.for_the_work / 3, (overrides, need)


@pytest.mark.parametrize("overrides, message", TOO_LARGE)
def test_a_model_far_too_large_is_refused_in_one_line_naming_its_key(tmp_path, overrides, message):
    cfg = plain_cfg(tmp_path, *overrides)
    with pytest.raises(ExperimentError) as refused:
        check_fits(cfg, mnist_sized(), Budget(ULIMIT_V, "ulimit -v", memory_limits.FRAMEWORK_ADDRESS_SPACE))
    text = str(refused.value)
    assert text.startswith(message) and "\n" not in text
    assert text.endswith("this process may use 7.6 GiB (ulimit -v)") and "a batch of 128" in text


def test_the_estimate_adds_weights_gradients_slots_the_larger_batch_and_the_data(tmp_path):
    cfg = plain_cfg(tmp_path, "model.hidden_units=[100]", "optimizer=adam", "batch_size=10")
    weights = (784 * 100 + 100) + (100 * 10 + 10)
    need = estimate(cfg, input_dim=784, num_classes=10, inference_examples=1000, data_bytes=123)
    assert (need.weights, need.gradients, need.slots) == (4 * weights, 4 * weights, 2 * 4 * weights)
    # Per example: the scaled pixels, each Dense's product and activation; kept, and their gradients.
    assert need.training_batch == 2 * 10 * (784 + 2 * 100 + 2 * 10) * 4
    assert need.inference_batch == 1000 * (784 + 2 * 100) * 4
    assert need.total == need.weights * 4 + need.inference_batch + 123


def test_a_limit_below_what_tensorflow_itself_takes_is_one_line(tmp_path):
    with pytest.raises(ExperimentError, match=r"^this process may use 2\.0 GiB \(ulimit -v\), and TensorFlow alone "
                                              r"takes about 3\.0 GiB: raise the limit$"):
        check_fits(plain_cfg(tmp_path), mnist_sized(), Budget(2 * GIB, "ulimit -v", 3 * GIB))


def _fake_proc(tmp_path, cgroup_line: str, available_kib: int = 16 * 2**20, rss_kib: int = 102_400):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    (proc / "self" / "status").write_text(f"Name:\tpython\nVmSize:\t 999999 kB\nVmRSS:\t {rss_kib} kB\n")
    (proc / "meminfo").write_text(f"MemTotal:  33554432 kB\nMemAvailable:  {available_kib} kB\n")
    return proc


@pytest.fixture
def no_rlimits(monkeypatch):
    monkeypatch.setattr(memory_limits.resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY,) * 2)


def test_the_budget_is_the_tightest_of_the_limits(tmp_path, monkeypatch, no_rlimits):
    # cgroup v2: the job's own folder has no limit, its parent has 4 GiB, of which 1 GiB is used (0.25 GiB of it
    # reclaimable file cache); the machine has 16 GiB available.
    cgroups = tmp_path / "cgroup"
    (cgroups / "jobs" / "this").mkdir(parents=True)
    (cgroups / "jobs" / "this" / "memory.max").write_text("max\n")
    (cgroups / "jobs" / "memory.max").write_text(f"{4 * GIB}\n")
    (cgroups / "jobs" / "memory.current").write_text(f"{GIB}\n")
    (cgroups / "jobs" / "memory.stat").write_text(f"anon 1\ninactive_file {GIB // 4}\n")
    proc = _fake_proc(tmp_path, "0::/jobs/this", rss_kib=2**20 // 2)
    budget = memory_limits.process_budget(proc, cgroups)
    assert budget.source == "cgroup memory.max"
    assert budget.limit == 4 * GIB - 0.75 * GIB + GIB / 2  # room left, plus what this process holds of it
    # With no cgroup limit, the machine's available memory; under `ulimit -v`, that.
    (cgroups / "jobs" / "memory.max").write_text("max\n")
    assert memory_limits.process_budget(proc, cgroups).source == "available memory"
    monkeypatch.setattr(memory_limits.resource, "getrlimit", lambda kind: (
        (ULIMIT_V, ULIMIT_V) if kind == resource.RLIMIT_AS else (resource.RLIM_INFINITY,) * 2))
    assert memory_limits.process_budget(proc, cgroups) == Budget(ULIMIT_V, "ulimit -v",
                                                                 memory_limits.FRAMEWORK_ADDRESS_SPACE)


def test_a_cgroup_v1_limit_is_read_too(tmp_path, no_rlimits):
    cgroups = tmp_path / "cgroup"
    (cgroups / "memory" / "job").mkdir(parents=True)
    (cgroups / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    (cgroups / "memory" / "job" / "memory.usage_in_bytes").write_text("0\n")
    proc = _fake_proc(tmp_path, "4:memory:/job\n0::/", rss_kib=0)
    assert memory_limits.process_budget(proc, cgroups) == Budget(2 * GIB, "cgroup memory.limit_in_bytes",
                                                                memory_limits.FRAMEWORK_RESIDENT)
    # v1 writes a huge number for no limit.
    (cgroups / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory_limits.process_budget(proc, cgroups).source == "available memory"


def test_a_trial_too_large_fails_with_the_reason_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """What a search's or grid sweep's job does with it: the job FAILs with the reason, returned, not raised."""
    monkeypatch.setattr(memory_limits, "process_budget",
                        lambda: Budget(ULIMIT_V, "ulimit -v", memory_limits.FRAMEWORK_ADDRESS_SPACE))
    data = write_npz(tmp_path / "mnist.npz")
    cfg = compose_cfg(tmp_path / "runs", f"data.path={data}", "model.hidden_units=[65536,65536]")
    outcome = sweep_job._outcome(cfg, ["model.hidden_units=[65536,65536]"], None, "job 0", None)
    assert outcome.state == "FAIL"
    assert outcome.reason.startswith("model.hidden_units=[65536, 65536] needs about")


@pytest.mark.slow
def test_the_command_refuses_a_model_too_large_for_its_limit_in_one_line_and_creates_no_run(tmp_path):
    """The report's three commands under `ulimit -v 8000000`: one line each, exit 2, before TensorFlow loads."""
    data = write_npz(tmp_path / "mnist.npz")
    runs = tmp_path / "runs"

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (ULIMIT_V, ULIMIT_V))

    for overrides, message in TOO_LARGE:
        done = subprocess.run(
            [sys.executable, "-m", "mnist_exp", *overrides, f"data.path={data}", f"runs_dir={runs}"],
            capture_output=True, text=True, cwd=PROJECT_ROOT, preexec_fn=limited, timeout=120,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()  # TensorFlow, had it loaded, would have logged lines of its own
        # The tightest limit names itself: ulimit -v, unless this machine has less memory available just now.
        assert line.startswith(f"error: {message}") and (
            line.endswith("this process may use 7.6 GiB (ulimit -v)") or line.endswith("(available memory)")), line
    assert not (runs / "mlflow.db").exists() or all_runs(store_client(runs)) == []


@pytest.mark.slow
def test_tensorflow_trains_within_the_address_space_the_check_leaves_it(tmp_path):
    """The measured framework figure still holds: the default model trains under `ulimit -v` set to what the check
    counts TensorFlow's (plus a little for this model and data), so the check never refuses what would run."""
    data = write_npz(tmp_path / "mnist.npz")
    limit = int(memory_limits.FRAMEWORK_ADDRESS_SPACE + 0.5 * GIB)

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "mnist_exp", f"data.path={data}", f"runs_dir={tmp_path / 'runs'}", "epochs=1",
         "plots=false", "mlflow.log_model=false"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, preexec_fn=limited, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
