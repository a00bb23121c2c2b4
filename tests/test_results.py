"""The committed search results under benchmarks/results/: they parse, and the best they name is the best of their
trials (what benchmarks/search_preset.py writes; BENCHMARKS.md, "Fashion-MNIST presets")."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
PRESETS = ("fashion_cnn", "fashion_mlp")


@pytest.mark.parametrize("preset", PRESETS)
def test_a_presets_study_export_parses_and_its_best_is_the_best_of_its_trials(preset):
    export = json.loads((RESULTS / f"{preset}.json").read_text())
    assert export["preset"] == preset
    assert export["command"].startswith(f"python -m mnist_exp -m hparams_search={preset} ")
    assert (PROJECT_ROOT / "conf" / "hparams_search" / f"{preset}.yaml").is_file()
    assert export["wall_seconds"] > 0 and export["cpu_seconds"] > 0 and export["direction"] == "maximize"
    trials = export["trials"]
    assert [t["number"] for t in trials] == list(range(len(trials)))
    assert all(t["state"] in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING") for t in trials)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert complete and all(isinstance(t["value"], float) and math.isfinite(t["value"]) for t in complete)
    best = export["best"]
    assert best["value"] == max(t["value"] for t in complete)
    (chosen,) = [t for t in trials if t["number"] == best["trial"]]
    assert chosen["state"] == "COMPLETE" and chosen["value"] == best["value"] and chosen["run_id"] == best["run_id"]
    # Selected on validation: the run's own final validation accuracy is the trial's value; test is only reported.
    assert best["metrics"]["final_val_accuracy"] == pytest.approx(best["value"])
    assert best["metrics"]["test_accuracy"] == pytest.approx(chosen["test_accuracy"])
    assert best["rerun"].startswith(f"python -m mnist_exp.rerun {best['run_id']} ")
    assert sum(t["baseline"] for t in trials) == 1 and trials[0]["baseline"], "the preset as it stands ran first"
    for trial in trials:  # every trial's overrides are its params, in Hydra's grammar
        assert {o.split("=", 1)[0] for o in trial["overrides"]} == {key.split(".width_")[0].removesuffix(".layers")
                                                                   for key in trial["params"]}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_best_experiment_of_a_preset_is_its_best_trials_configuration(make_cfg, preset):
    """conf/experiment/<preset>_best.yaml trains what the search's best run trained, value for value."""
    from mnist_exp import config
    from mnist_exp.tracking.run_inputs import _param_value

    best = json.loads((RESULTS / f"{preset}.json").read_text())["best"]["params"]
    flat = config.flatten(make_cfg(f"experiment={preset}_best"))
    where = ("runs_dir", "mlflow.", "hydra.")  # where it is recorded, not what it trains
    compared = {key for key in flat.keys() & best.keys() if not key.startswith(where)}
    assert {"model.name", "optimizer.lr", "epochs", "batch_size", "lr_schedule", "label_smoothing",
            "data.augment", "data.name", "seed"} <= compared
    assert {key: _param_value(flat[key]) for key in compared} == {key: best[key] for key in compared}
