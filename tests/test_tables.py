"""One table format, one score format, one "best first" that follows the metric and never crowns pruned work."""

from __future__ import annotations

from mnist_exp.commands import run_filters
from mnist_exp.multirun.parent_run import SweepSummary
from mnist_exp.reports import tables


def row(run_id, state, val_accuracy=None, val_loss=None, status="FINISHED", **extra):
    return {"run_id": run_id, "status": status, "state": state, "final_val_accuracy": val_accuracy,
            "final_val_loss": val_loss, "overrides": "", **extra}


def test_best_first_follows_the_metric_direction_and_puts_incomplete_work_last():
    rows = [row("low", "COMPLETE", 0.8, 0.2), row("pruned", "PRUNED", 0.99, 0.01), row("high", "COMPLETE", 0.9, 0.5),
            row("failed", "FAIL", None, None, status="FAILED")]
    by_accuracy = tables.best_first(rows, "val_accuracy", lambda r: r["final_val_accuracy"], tables.row_state)
    assert [r["run_id"] for r in by_accuracy][:2] == ["high", "low"]
    by_loss = tables.best_first(rows, "val_loss", lambda r: r["final_val_loss"], tables.row_state)
    assert [r["run_id"] for r in by_loss][:2] == ["low", "high"]


def test_a_pruned_run_is_never_the_best():
    summary = SweepSummary("val_accuracy", [row("pruned", "PRUNED", 0.99), row("complete", "COMPLETE", 0.5)])
    assert summary.best["run_id"] == "complete"
    assert SweepSummary("val_accuracy", [row("pruned", "PRUNED", 0.99)]).best is None


def test_runs_best_uses_each_runs_optimized_metric():
    rows = [
        row("acc-low", "COMPLETE", 0.8, 0.1, experiment="e", **{"params.optimized_metric": "val_accuracy"}),
        row("acc-high", "COMPLETE", 0.9, 0.9, experiment="e", **{"params.optimized_metric": "val_accuracy"}),
        row("loss-low", "COMPLETE", 0.1, 0.05, experiment="e", **{"params.optimized_metric": "val_loss"}),
        row("loss-high", "COMPLETE", 0.95, 0.4, experiment="e", **{"params.optimized_metric": "val_loss"}),
    ]
    assert sorted(r["run_id"] for r in run_filters.best_per_experiment(rows)) == ["acc-high", "loss-low"]


def test_columns_line_up_and_scores_have_four_decimals():
    text = tables.sweep_table([row("a" * 32, "COMPLETE", 0.91234, test_accuracy=0.9), row("b" * 32, "FAIL")])
    header, first, second = text.splitlines()
    assert first.split()[:3] == ["COMPLETE", "0.9123", "0.9000"] and second.split()[:3] == ["FAIL", "-", "-"]
    assert header.index("run id") == first.index("a" * 32) == second.index("b" * 32)


def test_sweep_search_and_runs_tables_say_which_model_each_row_is():
    from mnist_exp.multirun.search.search_result import TrialOutcome

    sweep = tables.sweep_table([row("a" * 32, "COMPLETE", 0.9, **{"params.model.name": "cnn"}),
                                row("b" * 32, "FAIL")])
    header, cnn, failed = sweep.splitlines()
    assert header.split()[:4] == ["state", "val_acc", "test_acc", "model"]
    assert cnn.split()[3] == "cnn" and failed.split()[3] == "-"
    trials = tables.trials_table([TrialOutcome(0, "COMPLETE", 0.9, {}, ["model=cnn"], 0.8, model="cnn"),
                                  TrialOutcome(1, "FAIL", None, {}, [], model=None)], "val_accuracy")
    header, first, second = trials.splitlines()
    assert header.split()[:5] == ["trial", "state", "val_accuracy", "test_acc", "model"]
    assert first.split()[4] == "cnn" and second.split()[4] == "-"
    runs = tables.runs_table([row("c" * 32, "COMPLETE", 0.9, experiment="e", name="n", seconds=1.0,
                                  **{"params.model.name": "mlp"})])
    header, line = runs.splitlines()
    assert line[header.index(" model ") + 1:].split()[0] == "mlp"


def test_a_name_with_a_newline_or_an_escape_sequence_stays_on_its_line():
    # A newline in a run name once broke the `runs` table in two; an ESC could repaint the terminal.
    text = tables.runs_table([row("d" * 32, "COMPLETE", 0.9, experiment="e\tx", name="two\nlines\x1b[2J\u2028",
                                  seconds=1.0)])
    header, line = text.splitlines()
    assert "two\\nlines\\x1b[2J\\u2028" in line and "e\\tx" in line and "\x1b" not in text
    assert line.index("COMPLETE") == header.index("state")
    assert tables.render(["a"], [["é…±"]]) == "a\né…±\n"
