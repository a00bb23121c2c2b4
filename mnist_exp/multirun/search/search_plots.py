"""An Optuna search's own pictures, drawn from its study: optimisation history, parameter importances and, of
several objectives, the Pareto front; each as PNG and as interactive HTML."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from mnist_exp.multirun.search.search_space import make_storage
from mnist_exp.reports.plots import pyplot
from mnist_exp.system.errors import first_line

log = logging.getLogger(__name__)


def search_plots(result: Any, folder: Path) -> list[Path]:
    """An Optuna search's optimisation history and parameter importances, as PNG and interactive HTML."""
    import warnings

    import optuna

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(study_name=result.study_name, storage=make_storage(result.storage))
    written = []
    static, interactive = optuna.visualization.matplotlib, optuna.visualization
    # Of several objectives, history and importances show the first (Optuna needs a target for them).
    first = {"target": lambda trial: trial.values[0], "target_name": result.metric} if result.objectives else {}
    plots = {
        "optimization_history": (partial(static.plot_optimization_history, **first),
                                 partial(interactive.plot_optimization_history, **first)),
        "param_importances": (partial(static.plot_param_importances, **first),
                              partial(interactive.plot_param_importances, **first)),
    }
    if result.objectives:
        names = {"target_names": list(result.objectives)}
        plots["pareto_front"] = (partial(static.plot_pareto_front, **names),
                                 partial(interactive.plot_pareto_front, **names))
    with warnings.catch_warnings():
        # "experimental" notices, and importance estimates from few trials: the plots still say what they can.
        warnings.simplefilter("ignore")
        for name, (static, interactive) in plots.items():
            try:
                axes = static(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.set_size_inches(9, 5)
                figure.tight_layout()
                figure.savefig(folder / f"{name}.png", dpi=100)
                plt.close(figure)
                interactive(study).write_html(folder / f"{name}.html", include_plotlyjs=True)
            except Exception as error:  # a picture must not fail a finished search (nor a bug in drawing it)
                # Importances need two or more completed trials whose parameters differ.
                log.warning("no %s plot: %s: %s", name, type(error).__name__, first_line(str(error)))
                continue
            written += [folder / f"{name}.png", folder / f"{name}.html"]
    return written
