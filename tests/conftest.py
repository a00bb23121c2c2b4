"""Shared test helpers: composed configs pointed at a temporary store, tiny data files, the real CLI in a
subprocess, reading the store it wrote, and waiting for a condition with a deadline."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mnist_exp.config.paths import STORE_FILE

if TYPE_CHECKING:
    from mnist_exp.multirun.search.search import Search, TrialJob

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
SWEEP_TAG = "mnist_exp.sweep"  # literal, as other checks read it: a renamed tag must fail the tests
PARENT_TAG = "mlflow.parentRunId"
POLL_INTERVAL_S = 0.5
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; the browser tests skip without it
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# Screenshots are kept for people to look at after CI: <project>/test-artifacts unless told otherwise.
SCREENSHOTS = Path(os.environ.get("MNIST_EXP_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))


# --- configs and data ---------------------------------------------------------------------------------

def compose_cfg(runs_dir: Path, *overrides: str, with_hydra: bool = False):
    """The composed config with `overrides`, everything a run writes redirected into `runs_dir`; `with_hydra`
    keeps the `hydra` node, as a sweeper sees the config."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"runs_dir={runs_dir}", *overrides], return_hydra_config=with_hydra)


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with everything a run writes redirected into tmp_path/runs."""
    return lambda *overrides: compose_cfg(tmp_path / "runs", *overrides)


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, gzipped unless told otherwise."""
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    content = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def learnable_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images whose class k lights up row block k: a tiny MLP learns it in one epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4: 2 * label + 6, 4:24] = 255
    return images, labels


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """A folder with the four standard gzipped IDX files: 300 train, 100 test images."""
    folder = tmp_path / "idx"
    folder.mkdir()
    x_train, y_train = learnable_digits(300, seed=1)
    x_test, y_test = learnable_digits(100, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    return folder


@pytest.fixture
def npz_file(tmp_path) -> Path:
    """A Keras-format mnist.npz: 400 train, 100 test learnable images."""
    return write_npz(tmp_path / "mnist.npz")


def write_npz(path: Path) -> Path:
    """A Keras-format mnist.npz at `path`: 400 train, 100 test learnable images."""
    x_train, y_train = learnable_digits(400, seed=3)
    x_test, y_test = learnable_digits(100, seed=4)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# --- data configs ---------------------------------------------------------------------------------------

def data_cfg(dataset="mnist", path=None, **changes):
    """The `data` section of conf/data/<dataset>.yaml, with `path` and `changes`."""
    section = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "data" / f"{dataset}.yaml"))
    return {**section, "path": None if path is None else str(path), **changes}


# --- a search with a fake launcher (test_search*.py) ----------------------------------------------------

SEARCH_SPACE =  {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "batch_size": {"type": "int", "low": 32, "high": 256, "step": 32},
    "model.hidden_units": {"type": "layers", "min_layers": 1, "max_layers": 3, "low": 16, "high": 512, "log": True},
}


def make_search(tmp_path, **changes) -> Search:
    """A Search of SEARCH_SPACE in tmp_path/optuna.db, random sampler, no pruner, 5 trials, unless `changes` say."""
    from mnist_exp.multirun.search.search import Search

    settings = {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "study_name": "test", "metric": "val_accuracy",
        "direction": "maximize", "space": SEARCH_SPACE, "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"}, "n_trials": 5,
    }
    return Search(**{**settings, **changes})


def value_of(job: TrialJob) -> float:
    """A made-up objective: larger learning rates score higher."""
    return 10 * next(float(o.split("=", 1)[1]) for o in job.overrides if o.startswith("optimizer.lr="))


def completing(jobs, first_index):
    """A fake launcher's outcomes: every trial COMPLETE, valued by value_of."""
    from mnist_exp.multirun.job_context import JobOutcome

    return [JobOutcome("COMPLETE", value=value_of(job), test_accuracy=0.5, run_id=f"run-of-trial-{job.number}")
            for job in jobs]


def load_trials(found: Search):
    import optuna

    return optuna.load_study(study_name=found.study_name, storage=found.storage).trials


# --- the README's examples ------------------------------------------------------------------------------

README = PROJECT_ROOT / "README.md"


def code_blocks(text: str) -> list[list[str]]:
    """The fenced code blocks of a Markdown text, each as its lines."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def ui_uri(line: str) -> str:
    """The store of a `UI: mlflow ui --backend-store-uri URI` line."""
    match = re.fullmatch(r"UI: \S+ ui --backend-store-uri (\S+)", line)
    assert match, f"not a UI line as mnist_exp.tracking.store.ui_command prints it: {line!r}"
    return shlex.split(match[1])[0]


@pytest.fixture
def activated_environment(monkeypatch):
    """PATH as in an activated .venv: the environment's own `mlflow` comes first (the README's transcripts)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


# --- an MLflow tracking server ---------------------------------------------------------------------------

@pytest.fixture
def sqlite_tracking_server():
    """`mlflow server` on 127.0.0.1 with an SQLite backend in a folder of its own: (URL, process, database)."""
    root = Path(tempfile.mkdtemp(prefix="mnist-exp-server-"))
    database, port = root / "server.db", free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database}",
         "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", server)
        yield url, server, database
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


# --- search spaces ------------------------------------------------------------------------------------------

# A space choosing the model, each model's own keys drawn only when it is chosen: as a space, and as a preset.
MODEL_CHOICE_SPACE = {
    "model": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "model.hidden_units": {"type": "layers", "min_layers": 1, "max_layers": 2, "low": 16, "high": 64,
                           "when": {"model": "mlp"}},
    "model.filters": {"type": "layers", "min_layers": 1, "max_layers": 2, "low": 8, "high": 32,
                      "when": {"model": ["cnn"]}},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}

MODEL_CHOICE_PRESET = """\
# @package _global_
# The model is a choice; each model's own keys are drawn only when it is chosen.
defaults:
  - override /hydra/sweeper: mnist_optuna
hydra:
  sweeper:
    study_name: models
    sampler: {name: random, seed: 0}
    search_space:
      model: {type: categorical, choices: [mlp, cnn]}
      model.hidden_units: {type: layers, min_layers: 1, max_layers: 2, low: 8, high: 512, when: {model: mlp}}
      model.filters: {type: layers, min_layers: 1, max_layers: 2, low: 4, high: 8, when: {model: cnn}}
      model.dropout: {type: float, low: 0.0, high: 0.3}
"""


def search_preset(tmp_path: Path, name: str, text: str) -> str:
    """`text` as tmp_path/conf/hparams_search/<name>.yaml, a preset of the test's own; returns the override that
    adds that folder to Hydra's search path, so that `hparams_search=<name>` finds it."""
    folder = tmp_path / "conf" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


# --- the CLI in a subprocess ------------------------------------------------------------------------------

def cli_command(*args: str, runs_dir: Path | None, python_options: Sequence[str] = ()) -> list[str]:
    """`python [python_options] -m mnist_exp ARGS runs_dir=RUNS_DIR` (no runs_dir override when it is None)."""
    return [sys.executable, *python_options, "-m", "mnist_exp", *args,
            *([f"runs_dir={runs_dir}"] if runs_dir is not None else [])]


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return {**os.environ, **env} if env else None


def run_cli(*args: str, runs_dir: Path | None, env: Mapping[str, str] | None = None, timeout: float = 600,
            python_options: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run `python -m mnist_exp ARGS runs_dir=RUNS_DIR` from the project root to its end; output captured as text.

    `env` adds to (does not replace) this process's environment.
    """
    return subprocess.run(
        cli_command(*args, runs_dir=runs_dir, python_options=python_options),
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=_environment(env),
    )


def start_cli(*args: str, runs_dir: Path | None, env: Mapping[str, str] | None = None,
              stdout: int | None = subprocess.PIPE, stderr: int | None = subprocess.PIPE,
              process_group: bool = False) -> subprocess.Popen:
    """Start `python -m mnist_exp ARGS runs_dir=RUNS_DIR` without waiting (text pipes by default).

    Its `pid` is the sweeping process's PID for a multirun (the one that writes the parent run). With
    `process_group`, it leads a process group of its own, as a terminal's foreground command does
    (`os.killpg(pid, SIGINT)` is then Ctrl-C pressed in that terminal).
    """
    return subprocess.Popen(
        cli_command(*args, runs_dir=runs_dir), cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr, text=True,
        env=_environment(env), process_group=0 if process_group else None,
    )


@pytest.fixture
def cli_in_process(monkeypatch, capsys, signals_handled):
    """`python -m mnist_exp ARGS runs_dir=RUNS_DIR` in this process, as the subprocess would run it (Hydra, our
    checks, one line and an exit code): for input refused before training, each case in a fraction of the
    subprocess's seconds. Returns (exit code, stdout, stderr). What the command changes for its process (gc.freeze,
    HYDRA_FULL_ERROR, signal handlers) is put back afterwards. Hydra's logging setup is left out, as Hydra's own
    pytest plugin leaves it out: its dictConfig closes the handlers other libraries made in earlier tests (absl's
    closes the stream it was given: pytest's capture). What the real process logs, the subprocess cases check."""
    import gc
    import importlib
    import logging

    from mnist_exp import __main__ as entry

    for module in ("hydra.core.utils", "hydra._internal.hydra", "hydra._internal.core_plugins.basic_launcher"):
        monkeypatch.setattr(importlib.import_module(module), "configure_log", lambda *args, **kwargs: None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str, runs_dir: Path) -> tuple[int, str, str]:
        # Set, so that monkeypatch takes back what cli() sets: a variable it deleted while absent, it forgets.
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
        # Hydra finds conf/ from the file of `python -m mnist_exp`; called as a module's function, it would look
        # for a package named conf: the same folder, named.
        monkeypatch.setattr(sys, "argv", ["mnist_exp", "--config-path", str(CONF_DIR), *args, f"runs_dir={runs_dir}"])
        capsys.readouterr()
        try:
            entry.cli()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            gc.unfreeze()
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def finish(process: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    """Wait for a process `start_cli` started; what it printed, as `run_cli` returns it. Killed on timeout."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# --- reading the store --------------------------------------------------------------------------------

def store_uri(runs_dir_or_uri: Path | str) -> str:
    """A runs_dir's default store (sqlite:///RUNS_DIR/mlflow.db), or a tracking URI as it is."""
    text = str(runs_dir_or_uri)
    return text if "://" in text else f"sqlite:///{text}/mlflow.db"


def store_client(runs_dir_or_uri: Path | str):
    """An MlflowClient on a runs_dir's store or on a tracking URI."""
    from mlflow import MlflowClient

    return MlflowClient(store_uri(runs_dir_or_uri))


def all_runs(client, experiment: str | None = None) -> list:
    """Every run of every experiment in the store, or of the experiment named `experiment`; [] when there is
    no such experiment."""
    if experiment is None:
        experiments = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        experiments = [found.experiment_id] if found is not None else []
    return list(client.search_runs(experiments, max_results=50_000)) if experiments else []


def sweep_parents_and_children(client, experiment: str | None = None) -> tuple[list, dict[str, list]]:
    """(the multirun parent runs, {parent run id: its child runs}), of the store or of one experiment."""
    runs = all_runs(client, experiment)
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "true"]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get(PARENT_TAG) == p.info.run_id] for p in parents}
    return parents, children


def single_sweep(client, experiment: str | None = None) -> tuple:
    """(parent, children) of the store's (or the experiment's) one multirun; fails the test when there is not
    exactly one."""
    parents, children = sweep_parents_and_children(client, experiment)
    assert len(parents) == 1, f"expected one sweep parent run, found {len(parents)}"
    return parents[0], children[parents[0].info.run_id]


def metric_steps(client, run_id: str, key: str) -> list[int]:
    """The steps (epochs) at which a run logged `key`, in order."""
    return [point.step for point in client.get_metric_history(run_id, key)]


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    """The paths of a run's artifacts at the top level, or in `folder`."""
    return {artifact.path for artifact in client.list_artifacts(run_id, folder)}


def owner_pid(run) -> int:
    """The PID in a run's mnist_exp.owner stamp (`host:pid:...`): the process that wrote the run."""
    return int(run.data.tags["mnist_exp.owner"].split(":")[1])


def count_read_only(database: Path, query: str, parameters: Sequence[object] = ()) -> int:
    """The count `query` finds in a SQLite file that a running process is still writing, read with plain sqlite3
    (read-only): an MLflow or Optuna client would race that process to create the file's tables. 0 while the
    file or its tables do not exist yet, or while a write holds the file past sqlite3's 5 s wait; any other error
    fails the test."""
    if not Path(database).exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute(query, parameters).fetchone()[0]
    except sqlite3.OperationalError as error:
        if "no such table" in str(error) or "database is locked" in str(error):
            return 0
        raise


def epochs_recorded(runs_dir: Path) -> int:
    """val_accuracy points in a runs_dir's store so far."""
    return count_read_only(Path(runs_dir) / "mlflow.db", "SELECT COUNT(*) FROM metrics WHERE key = 'val_accuracy'")


def runs_with_an_epoch(runs_dir: Path) -> int:
    """Runs that have recorded an epoch so far."""
    return count_read_only(Path(runs_dir) / "mlflow.db",
                           "SELECT COUNT(DISTINCT run_uuid) FROM metrics WHERE key = 'val_accuracy'")


def finished_trials(database: Path, study_name: str) -> int:
    """COMPLETE or PRUNED trials of the study `study_name` in an Optuna SQLite storage so far."""
    return count_read_only(database, "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE "
                                     "studies.study_name = ? AND trials.state IN ('COMPLETE', 'PRUNED')", [study_name])


def child_processes(pid: int) -> list[int]:
    """The processes `pid` started (a joblib search: its loky workers and resource trackers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def living(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not gone, not a zombie nobody reaped)."""
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


# --- waiting ---------------------------------------------------------------------------------------------

def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               process: subprocess.Popen | None = None) -> None:
    """Poll `condition` until it holds. Fail the test after `timeout` seconds, or as soon as `process` (the one
    expected to bring the condition about) exits, with its output; `what` names the awaited condition."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"waiting for {what}: the process exited with code {process.returncode} first"
                        f"\n{_output(process)}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what} in vain")
        time.sleep(POLL_INTERVAL_S)


def _output(process: subprocess.Popen) -> str:
    """What an exited process printed on its pipes (the ends, so a failure message stays readable)."""
    stdout, stderr = process.communicate(timeout=30)
    return "\n".join(text[-3000:] for text in (stdout, stderr) if text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def wait_for_http(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `url` until it answers; fail with the server's output if it exits or `timeout` passes."""
    wait_until(lambda: _answers(url), timeout, f"{url} to answer", process=server)


@contextlib.contextmanager
def chromium_page():
    """A page of Debian's Chromium, waiting as long as a cold UI on a busy 2-core machine needs."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def signal_when(process: subprocess.Popen, ready: Callable[[], bool], signal_number: int, timeout: float,
                waiting_for: str) -> str:
    """Send `signal_number` once `ready()` holds (`waiting_for` names that moment); the process's stderr
    after it exits."""
    try:
        wait_until(ready, timeout, waiting_for, process=process)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return stderr


def interrupt_two_training_jobs(process: subprocess.Popen, runs_dir: Path, send: Callable[[], None]) -> tuple:
    """Once two runs of a parallel sweep have recorded an epoch, call `send` (a signal to the sweep) and wait for
    the exit: (stderr, seconds from the signal to the exit, the sweep's worker processes before the signal)."""
    try:
        wait_until(lambda: runs_with_an_epoch(runs_dir) >= 2, 300, "both jobs training", process=process)
        workers = child_processes(process.pid)
        signalled = time.monotonic()
        send()
        _, stderr = process.communicate(timeout=120)
        return stderr, time.monotonic() - signalled, workers
    finally:
        process.kill()


@pytest.fixture
def signals_handled():
    """The CLI's Ctrl-C and SIGTERM handling installed in this process, pytest's own restored afterwards."""
    from mnist_exp.system import interrupts

    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


@pytest.fixture(autouse=True)
def reading_timeout_forgotten():
    """A reading command run in this process shortens MLflow's HTTP timeout in os.environ
    (store.reads_time_out_soon): it must not reach later tests, nor the CLI subprocesses they start."""
    from mnist_exp.tracking import store

    before = os.environ.get(store.HTTP_TIMEOUT_VARIABLE)
    yield
    store.reads_time_out_soon(False)
    if before is None:
        os.environ.pop(store.HTTP_TIMEOUT_VARIABLE, None)
    else:
        os.environ[store.HTTP_TIMEOUT_VARIABLE] = before


# --- make test's workers -------------------------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """make test's workers (pytest-xdist, --dist loadgroup) take a module's tests together, for the fixtures they
    share (a trained model, a server, a Ray cluster); a test marked with an xdist_group of its own (a long one that
    shares none) may run beside its module on another worker. The longest work is handed out first (the tests with
    a group of their own, then the modules with slow tests, each in file order), so that the two workers end
    together: started last, the longest test once ran alone for over a minute while the other worker idled."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: (item.get_closest_marker("xdist_group").args[0] != item.module.__name__,
                                 item.module.__name__ in slow_modules), reverse=True)


# --- one empty MLflow store for the session ---------------------------------------------------------------------



@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with every table made and nothing in it. A new store runs MLflow's migrations, seconds
    each time; tests copy this one into their runs folder instead (seeded_store). Made once for make test's workers
    (in the folder their temporary folders share), by a process of its own, so that this one imports no MLflow."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    store = root / "empty-store" / STORE_FILE
    with open(root / "empty-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the first one's store
        if not store.exists():
            making = root / "empty-store-making"
            shutil.rmtree(making, ignore_errors=True)
            making.mkdir()
            subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                            "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{making / STORE_FILE}"],
                           cwd=making, check=True, capture_output=True, timeout=300)
            making.rename(store.parent)
    return store


@pytest.fixture(autouse=True)
def seeded_store(request):
    """A test given tmp_path finds the empty store at tmp_path/runs/mlflow.db, where make_cfg and the CLI helpers'
    usual runs_dir write; `@pytest.mark.fresh_store` leaves the folder empty, for a test about making a store or
    about nothing being written."""
    if "tmp_path" not in request.fixturenames or request.node.get_closest_marker("fresh_store"):
        return
    seed_store(request.getfixturevalue("tmp_path") / "runs", request.getfixturevalue("empty_store"))


def seed_store(runs_dir: Path, empty: Path) -> None:
    """Copy the empty store into `runs_dir`, unless a store is there."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (runs_dir / STORE_FILE).exists():
        shutil.copyfile(empty, runs_dir / STORE_FILE)


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_the_run_folders():
    """No test may leave MLflow's default ./mlruns in the project (or wherever pytest runs), nor a Ray token in
    the home folder: writes stay in the run folders the test chose."""
    places = [PROJECT_ROOT / "mlruns", Path.cwd() / "mlruns", Path.home() / ".ray" / "auth_token"]
    before = {place for place in places if place.exists()}
    yield
    assert not {place for place in places if place.exists()} - before, "a test wrote outside its folders"
