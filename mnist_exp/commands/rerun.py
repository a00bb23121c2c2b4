"""`python -m mnist_exp.rerun RUN [overrides] [--tracking-uri URI]`: train a recorded run again.

The run's own config.yaml is the starting point, not today's conf/ files; overrides change it as on the main
command line (`key=value`, `group=option`, `+key=value`, `~key`). The new run goes to the store the run was
read from (unless the overrides choose another), tagged mnist_exp.rerun_of=RUN. With the same seed, on the
same machine and the same code, it reproduces the run's per-epoch metrics.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_exp.commands.arguments import OneLineParser
from mnist_exp.config import paths
from mnist_exp.config.plan import RunPlan, resolve
from mnist_exp.system.errors import BAD_INPUT, INTERRUPTED, ExperimentError, first_line, report
from mnist_exp.system.redaction import mask
from mnist_exp.tracking import recorded_config, run_tags
from mnist_exp.tracking.store import reading_uri

GROUPS = ("optimizer", "model", "data", "mlflow")  # the config groups whose option a rerun may switch
# Keys a run recorded before they existed lacks, with the value that gives what every run did then.
KEYS_ADDED_LATER = {"repeats": 1, "lr_schedule": "constant", "label_smoothing": 0.0, "data.augment": 0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m mnist_exp.rerun", description=__doc__.splitlines()[0],
                           usage_hint="RUN [OVERRIDE ...] [--tracking-uri URI] [--trust-loader M:F]")
    parser.add_argument("run", metavar="RUN", help="the id of the MLflow run to train again")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="changes to its config, e.g. epochs=10")
    parser.add_argument("--tracking-uri", default=reading_uri(), help="the MLflow store (default: %(default)s)")
    parser.add_argument("--trust-loader", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="a data.loader the run's config may name besides those of conf/data/*.yaml (repeatable)")
    # Options before, between or after the run id and the overrides, as people type them.
    args = parser.parse_intermixed_args(argv)
    from mnist_exp import experiment
    from mnist_exp.system import credentials, interrupts
    from mnist_exp.tracking.run_record import RunContext

    interrupts.install()
    credentials.mask_log_records()
    try:
        overrides = credentials.take_from_arguments(args.overrides)
        store_uri = credentials.take_password(args.tracking_uri, "--tracking-uri")
        cfg, recorded_overrides, plan = prepare(args.run, store_uri, overrides, args.trust_loader)
        context = RunContext(tags={run_tags.RERUN_OF_TAG: args.run, "mlflow.source.name": "python -m mnist_exp.rerun"})
        outcome = experiment.run(cfg, [*recorded_overrides, *overrides], context, plan)
    except ExperimentError as error:
        return report(str(error), BAD_INPUT)
    except KeyboardInterrupt:
        return report("interrupted; the run is recorded as KILLED", INTERRUPTED)
    print(experiment.summary(outcome))
    print(f"rerun of {args.run}")
    return 0


def prepare(run_id: str, store_uri: str, overrides: Sequence[str],
            trusted_loaders: Sequence[str] = ()) -> tuple[DictConfig, list[str], RunPlan]:
    """The run's config with `overrides` applied, the overrides it was recorded with, and the config resolved;
    warns (one line) when the run's code was another commit. ExperimentError when it cannot be rerun.

    The recorded config is data (mnist_exp.tracking.recorded_config): its places on this machine are replaced by the
    store's, and its data.loader must be one the user trusts, unless the overrides choose them."""
    from mnist_exp.tracking.store import open_store

    client = open_store(store_uri)
    run = _recorded_run(client, run_id, store_uri)
    cfg, recorded = _recorded_files(client, run_id)
    chosen = {override.lstrip("+~").partition("=")[0] for override in overrides}
    recorded_path = recorded_config.recorded_data_path(cfg)
    recorded_config.take_machine_keys_from(cfg, store_uri, chosen)
    if not chosen & {"data", "data.loader"}:
        recorded_config.check_loader(cfg, run_id, recorded_config.trusted_loaders(trusted_loaders))
    if recorded_path and not chosen & {"data", "data.path"}:
        raise ExperimentError(
            f"run {run_id} read its data from data.path={recorded_path}, and a rerun takes no path from a store: "
            f"name the data again, e.g. {recorded_config.rerun_command(run_id, store_uri, recorded_path)}"
        )
    cfg = apply_overrides(cfg, overrides)
    for key, value in KEYS_ADDED_LATER.items():
        # Recorded before the key existed (what runs then did), or a group option replaced whole by its YAML
        # file (data=...), which lacks what config.yaml sets for every option (data.augment).
        if not _has(cfg, key):
            OmegaConf.update(cfg, key, value, merge=False)
    repeats_given = any(o.lstrip("+").partition("=")[0] == "repeats" for o in overrides)
    plan = resolve(cfg, "rerun" if repeats_given else None)
    _warn_about_other_code(run)
    return cfg, [o for o in recorded if o and not o.lstrip("+~").startswith("hydra.")], plan


def _recorded_files(client, run_id: str) -> tuple[DictConfig, list[str]]:
    """The run's config.yaml, read as data, and the overrides of overrides.txt; one ExperimentError saying
    which is missing, too large or unreadable."""
    try:
        sizes = {info.path: info.file_size for info in client.list_artifacts(run_id)}
    except Exception as error:  # MLflow's or the artifact store's words
        raise ExperimentError(f"the artifacts of run {run_id} cannot be listed: {first_line(str(error))}") from None
    missing = [name for name in ("config.yaml", "overrides.txt") if name not in sizes]
    if missing:
        raise ExperimentError(f"run {run_id} has no {' and no '.join(missing)} to rerun from")
    for name in ("config.yaml", "overrides.txt"):
        recorded_config.check_size(run_id, name, sizes[name])  # before downloading it
    with tempfile.TemporaryDirectory(prefix="mnist-exp-rerun-") as folder:
        try:
            config_file = Path(client.download_artifacts(run_id, "config.yaml", folder))
            overrides_file = Path(client.download_artifacts(run_id, "overrides.txt", folder))
        except Exception as error:  # MLflow's, the artifact store's or the file system's words
            raise ExperimentError(f"the config.yaml of run {run_id} cannot be downloaded: "
                                  f"{first_line(str(error))}") from None
        return recorded_config.read(config_file, run_id), recorded_config.read_overrides(overrides_file, run_id)


def _has(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """`cfg` changed by command-line overrides in Hydra's grammar; `group=option` replaces the whole group
    with conf/<group>/<option>.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ExperimentError(first_line(str(error))) from None
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override():
            raise ExperimentError(f"{override.input_line}: a rerun is one run; sweep with python -m mnist_exp -m")
        if key.startswith("hydra") or override.package is not None:
            raise ExperimentError(f"{override.input_line}: a rerun takes key=value and group=option overrides only")
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig) or leaf not in node:
                raise ExperimentError(f"{override.input_line}: the run's config has no {key}")
            node.pop(leaf)
        elif key in GROUPS:
            cfg[key] = _group_option(key, override.value())
        else:
            OmegaConf.update(cfg, key, override.value(), merge=False)
    return cfg


def _group_option(group: str, option: object) -> DictConfig:
    folder = paths.PROJECT_ROOT / "conf" / group
    options = sorted(path.stem for path in folder.glob("*.yaml"))
    if option not in options:
        raise ExperimentError(f"{group}/{option} does not exist; choose {group} from: {', '.join(options)}")
    return OmegaConf.load(folder / f"{option}.yaml")


def _recorded_run(client, run_id: str, store_uri: str):
    from mlflow.exceptions import MlflowException

    from mnist_exp.tracking.store import names_no_run, store_writes

    with store_writes(store_uri, "reading the run"):  # a store failing is one line too, never "no run"
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if not names_no_run(error):
                raise
            raise ExperimentError(
                f"no run {run_id} in {mask(store_uri)} (--tracking-uri picks another store)") from None
    if run.info.lifecycle_stage == "deleted":
        restore = f"MLFLOW_TRACKING_URI={shlex.quote(mask(store_uri))} mlflow runs restore --run-id {run_id}"
        raise ExperimentError(f"run {run_id} is deleted; to rerun it, restore it first: {restore}")
    if run.data.tags.get(run_tags.SWEEP_TAG) == "true":
        best = run.data.tags.get("best_child_run_id")
        raise ExperimentError(f"run {run_id} is a sweep's parent run; rerun one of its jobs"
                              + (f", e.g. its best: {best}" if best else ""))
    return run


def _warn_about_other_code(run) -> None:
    recorded = run.data.tags.get(run_tags.GIT_COMMIT_TAG)
    current = run_tags.source_tags().get(run_tags.GIT_COMMIT_TAG)
    if recorded and current and recorded != current:
        print(f"warning: run {run.info.run_id} was trained by commit {recorded[:12]}, this checkout is "
              f"{current[:12]}: its metrics may not be reproduced", file=sys.stderr)

