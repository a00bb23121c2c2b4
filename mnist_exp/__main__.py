"""`python -m mnist_exp [overrides]`: the Hydra entry point and nothing else.

All logic lives in mnist_exp.experiment.run(cfg) (and, in a multirun, mnist_exp.multirun.sweep_job); this file
turns errors into one line on stderr and an exit code.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_exp.commands import hydra_arguments
from mnist_exp.system import collection, credentials, interrupts
from mnist_exp.system.errors import BAD_INPUT, INTERRUPTED, ExperimentError, exit_with
from mnist_exp.system.workarounds import hydra_raises_errors

# The beginnings of the errors Hydra's _run_hydra raises as ValueError about its flags (hydra-core 1.3).
HYDRA_FLAG_ERRORS = ("Only one of --run, --multirun", "The --resolve flag can only be used")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        from mnist_exp.multirun.sweep_job import run_job

        return run_job(cfg, overrides, hydra_cfg.job.num)
    from mnist_exp import experiment
    from mnist_exp.config.plan import resolve

    try:
        plan = resolve(cfg, "run")
        outcome = experiment.run(cfg, overrides, plan=plan)
    except ExperimentError as error:
        exit_with(str(error))  # here, not in cli(): Hydra would log the job's overrides first
    print(experiment.summary(outcome))
    return outcome[plan.metric]


def cli() -> None:
    """Run Hydra with errors as one line each: exit 2 for bad input, 130 for Ctrl-C."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # `kill` (SIGTERM) stops a run like Ctrl-C does, so it is recorded as KILLED.
    interrupts.install()
    credentials.mask_log_records()
    if any(argument.partition("=")[0] == "--experimental-rerun" for argument in sys.argv[1:]):
        exit_with("--experimental-rerun is disabled: it unpickles the file it is given, running whatever code is "
                  "in it; to run a recorded run again: python -m mnist_exp.rerun RUN_ID")
    # The whole command is one scope: more signals while the first one stops it are absorbed.
    with interrupts.scope(), hydra_raises_errors() as show_tracebacks:
        try:
            # Before Hydra logs the arguments or saves them in runs_dir/hydra.
            sys.argv[1:] = credentials.take_from_arguments(sys.argv[1:])
            # Hydra's argparse takes its flags before the overrides only (`optimizer=sgd,adam -m epochs=1`).
            flags, overrides = hydra_arguments.flags_first(sys.argv[1:])
            hydra_arguments.check_one_option(overrides)
            if hydra_arguments.shows_a_sweep(flags):  # Hydra refuses -m with --cfg, in a traceback
                sys.stdout.write(hydra_arguments.sweep_configs(flags, overrides))
                return
            sys.argv[1:] = [*flags, *overrides]
            with interrupts.errors_count_as_interrupt():
                main()
        except ExperimentError as error:
            exit_with(str(error), BAD_INPUT)
        except (HydraException, OmegaConfBaseException) as error:
            if show_tracebacks:
                raise
            exit_with(_hydra_message(error), BAD_INPUT)
        except ValueError as error:
            # Hydra's own checks of its flags (`--run -m`, `--resolve` alone) raise a bare ValueError.
            if show_tracebacks or not str(error).startswith(HYDRA_FLAG_ERRORS):
                raise
            exit_with(str(error), BAD_INPUT)
        except KeyboardInterrupt:
            interrupts.ignore()
            exit_with("interrupted; the run is recorded as KILLED", INTERRUPTED)
        finally:
            collection.leave_the_rest_to_exit()


def _hydra_message(error: Exception) -> str:
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.options:
        group = error.missing_cfg_file.rsplit("/", 1)[0] if error.missing_cfg_file else "group"
        return f"{error.missing_cfg_file} does not exist; choose {group} from: {', '.join(error.options)}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(dict.fromkeys(lines))


if __name__ == "__main__":
    cli()
