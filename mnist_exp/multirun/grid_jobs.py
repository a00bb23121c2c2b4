"""Which jobs a grid sweep runs, and which sweep it is.

- **Repeats.** A job whose config says `repeats: N` runs N times, with seeds seed, seed+1, ... as explicit
  `seed=` overrides, so its runs differ in their seed only.
- **Identity.** A grid sweep is named by `hydra.sweeper.name` when it is set, else by its overrides (in any
  order); within one store and experiment. Its parent run carries the name's digest in mnist_exp.sweep_key.
- **Resuming.** The same sweep started again continues its parent run: a job whose exact composed config
  already FINISHED in it is not run again; failed and killed ones are, and the parent's table counts each
  job once, by its best attempt.

Called by the grid sweeper (hydra_plugins/mnist_exp_grid_sweeper) and the parent run (mnist_exp.multirun.parent_run).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_exp.system.redaction import mask
from mnist_exp.tracking import run_tags

log = logging.getLogger("mnist_exp")


def sweep_key(arguments: Sequence[str], name: str | None) -> str:
    """The digest that names a grid sweep: of `name`, else of its overrides in any order."""
    identity = f"name:{name}" if name else "overrides:" + "\n".join(sorted(mask(a) for a in arguments))
    return hashlib.sha256(identity.encode()).hexdigest()


def repeated(job: Sequence[str], repeats: int, seed: int) -> list[list[str]]:
    """The job once per repeat, each with its own `seed=` override; the job as it is for one repeat."""
    if repeats <= 1:
        return [list(job)]
    others = [override for override in job if override.partition("=")[0] != "seed"]
    return [[*others, f"seed={seed + repeat}"] for repeat in range(repeats)]


@dataclass
class GridPlan:
    """Turns the sweeper's batches into the jobs to launch. `compose(overrides)` is the job's config as the
    launcher composes it; `done` maps the config digests already FINISHED in this sweep to their runs."""

    compose: Callable[[list[str]], Any]
    done: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    def jobs(self, batch: Iterable[Sequence[str]]) -> list[list[str]]:
        planned = []
        for job in batch:
            cfg = self.compose(list(job))
            repeats, seed = cfg.get("repeats"), cfg.get("seed")
            valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (repeats, seed))
            # An invalid value is the job's own error: it runs, fails validation, and its FAILED run says why.
            for overrides in repeated(job, repeats, seed) if valid else [list(job)]:
                digest = run_tags.config_digest(self.compose(overrides) if overrides != list(job) else cfg)
                if digest in self.done:
                    log.info("skipping %s: FINISHED in this sweep before (run %s)",
                             run_tags.run_name(overrides), self.done[digest])
                    self.skipped += 1
                else:
                    planned.append(overrides)
        return planned


def previous_sweep(client, experiment_id: str, key: str):
    """The newest parent run of the sweep named `key` in the experiment, or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{run_tags.SWEEP_KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def finished_digests(children: Iterable[Any]) -> dict[str, str]:
    """{config digest: run id} of the children that FINISHED complete."""
    return {
        run.data.tags[run_tags.CONFIG_DIGEST_TAG]: run.info.run_id
        for run in children
        if run.info.status == "FINISHED" and run.data.tags.get(run_tags.STATE_TAG) == "COMPLETE"
        and run_tags.CONFIG_DIGEST_TAG in run.data.tags
    }


def counted(children: Iterable[Any]) -> list[Any]:
    """One run per job of a sweep: of the attempts at one config, the newest that FINISHED, else the newest.
    Runs without a config digest (an Optuna search's trials) each count."""
    best: dict[str, Any] = {}
    for run in children:
        key = run.data.tags.get(run_tags.CONFIG_DIGEST_TAG) or run.info.run_id
        if key not in best or _rank(run) > _rank(best[key]):
            best[key] = run
    return list(best.values())


def _rank(run) -> tuple[bool, int]:
    return run.info.status == "FINISHED", run.info.start_time or 0
