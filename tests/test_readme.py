"""README.md's example outputs are what the code prints for those values, and what the docs name exists.

Each example in the README is a transcript: `$ command`, `...` for the lines a real run printed before
(Keras' epochs, Hydra's log), then the output the code produces at the end. The tests parse the values out
of a transcript, print them again with the code that prints them in the product, and compare the lines:
a table edited by hand into a format the code does not print fails here.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from mnist_exp import config, experiment
from mnist_exp.config import paths
from mnist_exp.multirun import sweeping
from mnist_exp.multirun.parent_run import SweepSummary
from mnist_exp.multirun.search.search import SearchResult, TrialOutcome
from mnist_exp.reports import tables
from mnist_exp.tracking import store
from tests.conftest import PROJECT_ROOT, README, code_blocks, run_cli, ui_uri

USER_DOCS = (README, PROJECT_ROOT / "BENCHMARKS.md")
# Where the README's transcripts say the checkout is: a neutral path, not the machine they ran on.
CHECKOUT = Path("/home/you/mnist-exp")
# MLflow's status for each state a table shows (mnist_exp.tracking.run_record).
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


def transcripts(marker: str) -> list[tuple[list[str], list[str], str | None]]:
    """Of each README transcript with a line starting with `marker`: the command's arguments after
    `python -m mnist_exp`, the output from that line, and the first line a search prints before it (if shown)."""
    found = []
    for block in code_blocks(README.read_text()):
        searched = any(line.startswith(marker) for line in block)
        if not (block and block[0].startswith("$ python -m mnist_exp ") and searched):
            continue
        command = shlex.split(block[0].removeprefix("$ "))
        assert command[:3] == ["python", "-m", "mnist_exp"], block[0]
        start = next(i for i, line in enumerate(block) if line.startswith(marker))
        first = block[1] if block[1].startswith(("New study ", "Resuming study ")) else None
        assert block[1:start] in ([], ["..."], [first, "..."]), "between the command and the output: only `...`"
        found.append((command[3:], block[start:], first))
    return found


def transcript(marker: str) -> tuple[list[str], list[str]]:
    """(arguments, output) of the README's one transcript that has a line starting with `marker`."""
    found = transcripts(marker)
    assert len(found) == 1, f"expected one README example with a line starting {marker!r}, found {len(found)}"
    return found[0][:2]


def number(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


def test_the_run_summary_is_what_a_run_prints(activated_environment, monkeypatch):
    arguments, output = transcript("val_accuracy ")
    assert len(output) == 3, output
    scores = re.fullmatch(r"val_accuracy (\S+)  test_accuracy (\S+)  \((\S+), (\d+) epochs?, (\S+) s\)", output[0])
    assert scores, f"not the summary line experiment.summary prints: {output[0]!r}"
    run_id = re.fullmatch(r"MLflow run (\w+)", output[1])
    assert run_id, output[1]
    printed = experiment.summary({
        "val_accuracy": float(scores[1]), "test_accuracy": float(scores[2]), "dataset": scores[3],
        "epochs_completed": int(scores[4]), "train_seconds": float(scores[5]), "run_id": run_id[1],
        "tracking_uri": ui_uri(output[-1]),
    })
    assert printed.splitlines() == output

    overrides = dict(argument.split("=", 1) for argument in arguments)
    assert (scores[3], int(scores[4])) == (overrides["data"], int(overrides["epochs"])), "the command's own run"
    # The store a checkout at CHECKOUT writes to with the default config.
    monkeypatch.setattr(paths, "PROJECT_ROOT", CHECKOUT)
    defaults = OmegaConf.load(PROJECT_ROOT / "conf" / "config.yaml")
    assert ui_uri(output[-1]) == store.tracking_uri({"runs_dir": defaults.runs_dir, "mlflow": {"tracking_uri": None}})


def test_the_sweep_table_is_what_a_grid_sweep_prints(activated_environment, capsys):
    arguments, output = transcript("Sweep ")
    heading = re.fullmatch(r"Sweep (\w+): (\d+) jobs, sorted by final (\w+)", output[0])
    assert heading, output[0]
    metric, jobs = heading[3], int(heading[2])
    rows = []
    for line in output[2: 2 + jobs]:
        state, val_acc, test_acc, model, run_id, overrides = line.split(None, 5)
        assert state in STATUS, f"not a state the sweep table prints: {state!r}"
        rows.append({"state": state, "status": STATUS[state], "final_val_accuracy": number(val_acc),
                     "test_accuracy": number(test_acc), "run_id": run_id, "overrides": overrides,
                     "params.model.name": None if model == "-" else model})
    parent = SimpleNamespace(run_id=heading[1], store=SimpleNamespace(uri=ui_uri(output[-1])))

    sweeping.report_grid(parent, SweepSummary(metric, rows))
    assert capsys.readouterr().out.lstrip("\n").splitlines() == output

    assert rows == tables.best_first(rows, metric, lambda row: row[f"final_{metric}"], tables.row_state), \
        "the rows in the order the sweep sorts them"
    grid = [[f"{key}={value}" for value in values.split(",")]
            for key, values in (argument.split("=", 1) for argument in arguments if argument != "-m")]
    assert sorted(row["overrides"] for row in rows) == sorted(" ".join(job) for job in itertools.product(*grid)), \
        "one row per job of the command's grid"


SEARCHES = transcripts("Study ")


@pytest.mark.parametrize("arguments, output, first", SEARCHES, ids=[" ".join(a[:2]) for a, _, _ in SEARCHES])
def test_the_search_summary_is_what_an_optuna_search_prints(activated_environment, capsys, monkeypatch,
                                                             arguments, output, first):
    heading = re.fullmatch(r"Study (\S+) \((\S+)\): (\d+) finished trials .*; (\d+) run by this sweep", output[0])
    assert heading, output[0]
    columns = output[1].split()
    objectives = columns[2:columns.index("front")] if "front" in columns else []
    metric = columns[2]
    trials = []
    for line in itertools.takewhile(lambda line: re.match(r"\s*\d+  ", line), output[2:]):
        on_front = bool(objectives) and line.split()[2 + len(objectives)] == "*"  # else the `front` cell is empty
        cells = line.split(None, 4 + max(1, len(objectives)) + on_front)
        trial, state, *values, test_acc, model, overrides = [cell for cell in cells if cell != "*"]
        flags = []
        while overrides.endswith("]") and "  [" in overrides:
            overrides, flag = overrides[:-1].rsplit("  [", 1)
            flags.insert(0, flag)
        reasons = [flag for flag in flags if flag != "baseline"]
        values = [number(v.replace(",", "")) for v in values]
        trials.append(TrialOutcome(int(trial), state, values[0], {}, overrides.split(" "), number(test_acc),
                                   reason=reasons[0] if reasons else None, baseline="baseline" in flags,
                                   values=values if objectives else None, on_front=on_front,
                                   model=None if model == "-" else model))
    result = SearchResult(heading[1], heading[2], metric, config.direction(metric),
                          sorted(trials, key=lambda t: t.number), ran_now=int(heading[4]),
                          objectives={m: config.direction(m) for m in objectives})
    champion = next((re.match(r"registered models:/(\S+)@champion \(version (\d+)\)", line) for line in output
                     if line.startswith("registered models:/")), None)
    parent_line = next(line for line in output if line.startswith("MLflow parent run "))
    parent = SimpleNamespace(run_id=parent_line.split()[3], store=SimpleNamespace(uri=ui_uri(output[-1])))
    summary = SimpleNamespace(champion=f"{champion[1]}/{champion[2]}" if champion else None,
                              failed=sum(t.state == "FAIL" for t in trials), rows=trials)
    # The best trial's run (its id is in no other line), in the store of the transcript's checkout's default config.
    retrain_line = next(line for line in output if line.startswith("retrain: "))
    result.best.run_id = retrain_line.split()[4]
    monkeypatch.setattr(store, "default_uri", lambda: parent.store.uri)
    retrain = result.retrain_command(parent.store.uri)

    n_trials = int(dict(a.split("=", 1) for a in arguments if "=" in a)["hydra.sweeper.n_trials"])
    if first is not None:  # what the search printed first, on the study as it found it (new)
        new_study = SimpleNamespace(study_name=result.study_name, storage=result.storage, n_trials=n_trials,
                                    open_study=lambda: SimpleNamespace(get_trials=lambda deepcopy: []), created=True)
        sweeping.announce_search(new_study, parent)
        assert capsys.readouterr().out.splitlines() == [first]
    sweeping.report_search(parent, result, summary, retrain)
    assert capsys.readouterr().out.lstrip("\n").splitlines() == output
    assert int(heading[3]) == n_trials, "the search ran until the study held n_trials finished trials"


def test_the_rerun_is_what_a_rerun_prints_and_scores_as_the_search_s_best_trial(activated_environment):
    (block,) = [block for block in code_blocks(README.read_text())
                if block and block[0].startswith("$ python -m mnist_exp.rerun ")]
    (run_id,) = shlex.split(block[0].removeprefix("$ "))[3:]
    assert block[1] == "...", "between the command and the output: only `...`"
    output = block[2:]
    assert len(output) == 4 and output[3] == f"rerun of {run_id}", output
    scores = re.fullmatch(r"val_accuracy (\S+)  test_accuracy (\S+)  \((\S+), (\d+) epochs?, (\S+) s\)", output[0])
    assert scores, output[0]
    printed = experiment.summary({
        "val_accuracy": float(scores[1]), "test_accuracy": float(scores[2]), "dataset": scores[3],
        "epochs_completed": int(scores[4]), "train_seconds": float(scores[5]),
        "run_id": output[1].removeprefix("MLflow run "), "tracking_uri": ui_uri(output[2]),
    })
    assert printed.splitlines() == output[:3]
    # The search transcript's best trial: its retrain line, and the scores of its row.
    (search,) = [output for arguments, output, _ in SEARCHES if "hparams_search=optuna" in arguments]
    assert f"retrain: python -m mnist_exp.rerun {run_id}" in search
    best_row = search[2].split()
    assert (best_row[2], best_row[3]) == (scores[1], scores[2]), "the same seed reproduced the trial"


def test_the_prediction_is_in_the_form_predict_prints():
    arguments, output = transcript_of_predict()
    (line,) = output
    match = re.fullmatch(r"(\S+): (\S+)  \(top 3: ((?:\S+ \d\.\d{3}(?:, )?){3})\)", line)
    assert match, f"not a line as mnist_exp.predict prints it: {line!r}"
    ranked = [(name, float(p)) for name, p in (pair.rsplit(" ", 1) for pair in match[3].split(", "))]
    assert match[1] == arguments[0] and match[2] == ranked[0][0], "the picture it was given; the top class first"
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True) and sum(p for _, p in ranked) <= 1


def transcript_of_predict() -> tuple[list[str], list[str]]:
    found = [block for block in code_blocks(README.read_text())
             if block and block[0].startswith("$ python -m mnist_exp.predict ")]
    assert len(found) == 1, "one transcript of mnist_exp.predict"
    return shlex.split(found[0][0].removeprefix("$ "))[3:], found[0][1:]


def error_examples() -> list[tuple[str, str]]:
    """(`python -m mnist_exp ...` arguments, the error line) of the README's Errors section."""
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [block for block in code_blocks(section) if block and block[0].startswith("$ ")]
    pairs = list(zip(block[::2], block[1::2], strict=True))
    assert pairs and all(command.startswith("$ python -m mnist_exp ") for command, _ in pairs), block
    return [(command.removeprefix("$ python -m mnist_exp "), line) for command, line in pairs]


@pytest.mark.fresh_store
@pytest.mark.slow
@pytest.mark.parametrize(("arguments", "line"), error_examples())
def test_the_errors_section_shows_what_the_cli_prints(tmp_path, arguments, line):
    result = run_cli(*shlex.split(arguments), runs_dir=tmp_path / "runs", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == line
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_user_docs_name_no_machine_paths_and_no_issue_numbers():
    for doc in USER_DOCS:
        text = doc.read_text()
        for pattern in (r"/work/", r"/tmp/pytest", r"/root/", r"/home/(?!you/)", r"\bissues? \d+", r"\(#\d+\)"):
            assert not re.search(pattern, text), f"{doc.name}: {re.search(pattern, text)[0]!r}"
    for uri in re.findall(r"sqlite:///\S+", "\n".join(map("\n".join, code_blocks(README.read_text())))):
        if "<" not in uri and "$" not in uri:
            assert uri.startswith(f"sqlite:///{CHECKOUT}/runs/"), f"a store outside the neutral checkout: {uri}"


MEASUREMENT = re.compile(r"\d+(\.\d+)?\s?(s|ms|x|%|MiB|GiB|MB|GB)\b|\d\.\d+x|\d+(\.\d+)? points")


def test_figures_live_in_benchmarks_only():
    performance = README.read_text().split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    assert not MEASUREMENT.search(performance), MEASUREMENT.search(performance)[0]
    conf = PROJECT_ROOT / "conf"
    commented = [conf / "config.yaml", *sorted((conf / "hparams_search").glob("*.yaml"))]
    for path in commented:
        for line in path.read_text().splitlines():
            comment = line.split("#", 1)[1] if "#" in line else ""
            assert not MEASUREMENT.search(comment), f"{path.relative_to(PROJECT_ROOT)}: {line.strip()}"


def test_every_test_the_readme_names_exists():
    defined = {
        path.name: {node.name for node in ast.parse(path.read_text()).body
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        for path in (PROJECT_ROOT / "tests").glob("test_*.py")
    }
    named = []
    for line in README.read_text().splitlines():
        current = None  # `::test_x` right after `test_file.py::test_y` is in that file
        for match in re.finditer(r"`(?:tests/)?(test_\w+\.py)?(?:::(test_\w+))?", line):
            current = match[1] or current
            if match[1] or match[2]:
                named.append((current, match[2]))
    assert named
    missing = [f"{file}::{name}" if name else file for file, name in named
               if file not in defined or (name and name not in defined[file])]
    assert not missing, f"the README names tests that do not exist: {missing}"
