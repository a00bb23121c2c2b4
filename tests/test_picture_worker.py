"""The picture worker: a run's pictures drawn by another process, which serves every run of its process, is
replaced when it dies, and ends with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mnist_exp.reports import picture_worker
from tests.conftest import living, wait_until

PICTURES = {"learning_curves.png", "confusion_matrix.png", "misclassified.png"}


def draw(folder, predictions=None) -> set[str]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    picture_worker.draw_run_plots(
        folder, {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]},
        rng.integers(0, 256, (50, 784)).astype(np.uint8), labels,
        (labels + 1) % 10 if predictions is None else predictions, [str(digit) for digit in range(10)],
    )
    return {path.name for path in folder.iterdir()}


@pytest.fixture
def fresh_worker():
    picture_worker.stop()
    yield
    picture_worker.stop()


def test_one_worker_process_draws_the_pictures_of_every_run(tmp_path, fresh_worker):
    picture_worker.start()
    worker = picture_worker.pid()
    assert worker is not None and worker != os.getpid()
    assert draw(tmp_path / "first") == PICTURES
    assert draw(tmp_path / "second") == PICTURES
    assert picture_worker.pid() == worker, "reused, not started again"
    picture_worker.stop()
    assert picture_worker.pid() is None and not living([worker])


def test_a_worker_that_died_is_replaced_and_the_pictures_are_still_drawn(tmp_path, fresh_worker):
    picture_worker.start()
    dead = picture_worker.pid()
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: not living([dead]), 30, "the killed worker to die")
    assert draw(tmp_path / "pictures") == PICTURES
    assert picture_worker.pid() not in (None, dead)


def test_a_drawing_error_is_one_line_and_the_worker_serves_on(tmp_path, fresh_worker):
    picture_worker.start()
    worker = picture_worker.pid()
    with pytest.raises(RuntimeError) as failed:
        draw(tmp_path / "bad", predictions=np.zeros(3, np.uint8))  # 3 predictions for 50 labels
    assert "\n" not in str(failed.value) and str(failed.value).split(":")[0].endswith("Error")
    assert draw(tmp_path / "good") == PICTURES and picture_worker.pid() == worker


def test_the_worker_ends_when_the_process_that_started_it_is_killed():
    started = subprocess.run(
        [sys.executable, "-c", "import os, signal\n"
         "from mnist_exp.reports import picture_worker\n"
         "picture_worker.start()\n"
         "print(picture_worker.pid(), flush=True)\n"
         "os.kill(os.getpid(), signal.SIGKILL)"],
        capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == -signal.SIGKILL, started.stderr
    worker = int(started.stdout)
    wait_until(lambda: not living([worker]), 60, f"the orphaned picture worker {worker} to exit")


def test_without_a_worker_the_pictures_are_drawn_in_this_process(tmp_path, fresh_worker, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    picture_worker.start()  # cannot start: no error, the drawing stays here
    assert picture_worker.pid() is None
    assert draw(tmp_path / "pictures") == PICTURES


def test_a_worker_that_does_not_answer_is_killed_and_the_pictures_drawn_here(tmp_path, fresh_worker, monkeypatch):
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\nexec cat >/dev/null\n")  # reads every request, answers none
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))
    monkeypatch.setattr(picture_worker, "ANSWER_TIMEOUT_S", 1.0)
    picture_worker.start()
    mute = picture_worker.pid()
    assert draw(tmp_path / "pictures") == PICTURES
    assert picture_worker.pid() is None and not living([mute])
