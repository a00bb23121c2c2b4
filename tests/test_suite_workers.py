"""make test's two workers: each module's tests stay together on one worker, for the fixtures they share (a trained
model, a server, a Ray cluster). pytest-xdist's --dist loadgroup once stopped grouping without a word (on pytest 9.2:
pyproject.toml keeps pytest below it); this notices."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow  # two pytest workers of its own


def test_each_modules_tests_run_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    for module in ("first", "second"):
        (tmp_path / f"test_{module}.py").write_text("".join(f"def test_{n}():\n    pass\n\n\n" for n in range(4)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for worker, module in re.findall(r"\[(gw\d)\] .*PASSED (test_\w+)\.py::", result.stdout):
        workers.setdefault(module, set()).add(worker)
    assert set(workers) == {"test_first", "test_second"}, result.stdout[-3000:]
    assert all(len(seen) == 1 for seen in workers.values()), workers
