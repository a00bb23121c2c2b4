"""The command line before Hydra parses it: its flags put first, a list of presets refused, `-m ... --cfg`
answered here.

- **Order.** Hydra's argparse takes its flags only before the overrides (`optimizer=sgd -m epochs=1` is an
  8-line usage block there); `flags_first` moves them to the front, overrides kept in their order.
- **`-m` with `--cfg job|hydra|all`.** Hydra refuses the pair with a traceback. `sweep_configs` prints what
  each job of the sweep would be composed with, a YAML document per job headed by its overrides, since
  checking what every job gets is why one asks for the config of a sweep (`yaml.safe_load_all` reads them).
  A search's trials are drawn while it runs: its base config, headed by the keys the search draws.
- **One preset.** `'experiment=[a,b]'` composes both presets into one config, the later winning key by key;
  `check_one_option` refuses it in one line (a sweep over presets is `-m experiment=a,b`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mnist_exp.system.errors import ExperimentError

# Hydra's flags that take a value (hydra/_internal/utils.py get_args_parser, hydra-core 1.3); --info takes
# one of INFO_CHOICES, or none.
VALUE_FLAGS = frozenset({"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                         "--config-dir", "-cd", "--experimental-rerun"})
INFO_FLAGS = frozenset({"--info", "-i"})
INFO_CHOICES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})
CFG_CHOICES = ("job", "hydra", "all")
MULTIRUN_FLAGS = frozenset({"--multirun", "-m"})
# Config groups that take one option, and what one is; Hydra takes a list of options and merges them.
ONE_OPTION_GROUPS = {"experiment": "preset", "hparams_search": "search"}
ONE_OPTION_HINTS = {"experiment": "to run each in turn: -m experiment={options}",
                    "hparams_search": "start one search per command"}
# mnist_exp/: what the `@hydra.main(config_path=...)` of mnist_exp/__main__.py is relative to
ENTRY_POINT_DIR = Path(__file__).resolve().parents[1]


def flags_first(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides), each in the order given."""
    flags: list[str] = []
    overrides: list[str] = []
    arguments = list(arguments)
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if not argument.startswith("-"):
            overrides.append(argument)
            continue
        flags.append(argument)
        takes_value = argument in VALUE_FLAGS or (
            argument in INFO_FLAGS and index < len(arguments) and arguments[index] in INFO_CHOICES)
        if takes_value and index < len(arguments):
            flags.append(arguments[index])
            index += 1
    return flags, overrides


def check_one_option(overrides: Sequence[str]) -> None:
    """ExperimentError for a list given to a group of ONE_OPTION_GROUPS (`'experiment=[a,b]'`), also as one
    value of a sweep: Hydra would merge the options into one config without a word."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    mine = [text for text in overrides if text.lstrip("+~").partition("=")[0] in ONE_OPTION_GROUPS]
    for override in OverridesParser.create().parse_overrides(mine):
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        lists = [item for item in values if isinstance(item, list) and len(item) > 1]
        if lists:
            group = override.key_or_group
            raise ExperimentError(f"{override.input_line}: {group} takes one {ONE_OPTION_GROUPS[group]} (a list "
                                  f"would merge {', '.join(map(str, lists[0]))} into one config); "
                                  + ONE_OPTION_HINTS[group].format(options=",".join(map(str, lists[0]))))


def shows_a_sweep(flags: Sequence[str]) -> bool:
    """Whether the flags ask for -m together with --cfg (which Hydra refuses)."""
    names = {flag.split("=", 1)[0] for flag in flags if flag.startswith("-")}
    return bool(names & MULTIRUN_FLAGS) and bool(names & {"--cfg", "-c"})


def sweep_configs(flags: Sequence[str], overrides: Sequence[str]) -> str:
    """What `--cfg` prints for each job of the sweep `overrides` would run (see the module's docstring)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    options = _options(flags)
    with initialize_config_dir(version_base="1.3", config_dir=str(options["config_dir"]), job_name="__main__"):
        parsed = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(
            list(overrides))
        for override in parsed:
            if override.is_sweep_override() and override.is_hydra_override():
                raise ExperimentError(f"{override.input_line}: a sweep cannot vary Hydra's own settings")
        hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
        task = [o for o in parsed if not o.is_hydra_override()]

        def composed(job: Sequence[str]):
            return compose(options["config_name"], [*hydra_overrides, *job], return_hydra_config=True)

        base = composed([o.input_line for o in task if not o.is_sweep_override()])
        sweeper = base.hydra.sweeper
        if str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
            for override in task:
                if override.is_sweep_override():
                    raise ExperimentError(f"{override.input_line}: put values to search in "
                                          "hydra.sweeper.search_space, not on the command line")
            drawn = ", ".join(sweeper.get("search_space") or {}) or "nothing (its search_space is empty)"
            note = (f"an Optuna search of {sweeper.n_trials} trials: each trial is this config with values drawn "
                    f"for {drawn} (hydra.sweeper.search_space: --cfg hydra)")
            return _document(note, base, options)
        jobs = _grid_jobs(sweeper, task, composed)
        return "---\n".join(
            _document(f"job {number} of {len(jobs)}: {' '.join(job) or '(no overrides)'}", cfg, options, number)
            for number, (job, cfg) in enumerate(jobs))


def _grid_jobs(sweeper, task, composed) -> list[tuple[list[str], object]]:
    """(overrides, config) of each job, as the grid sweeper plans them: Hydra's basic sweeper's product of
    hydra.sweeper.params and the command line, each job then repeated `repeats` times (mnist_exp.multirun.grid_jobs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnist_exp.multirun import grid_jobs
    from mnist_exp.system.workarounds import hydra_basic_sweeper_class

    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    arguments = [*OverridesParser.create().parse_overrides(params), *task]
    batches = hydra_basic_sweeper_class().split_arguments(arguments, None)
    if str(sweeper.get("_target_", "")).endswith("GridSweeper"):
        plan = grid_jobs.GridPlan(compose=composed)
        return [(job, composed(job)) for batch in batches for job in plan.jobs(batch)]
    return [(job, composed(job)) for batch in batches for job in batch]


def _document(heading: str, cfg, options: dict, number: int | None = None) -> str:
    """One job's config as Hydra's --cfg shows it (hydra/_internal/hydra.py show_cfg), under a comment."""
    from hydra.core.hydra_config import HydraConfig

    # ${hydra:...} resolves through Hydra's process-wide config: set for this job, then put back as it was.
    previous = HydraConfig.instance().cfg
    try:
        return _shown(heading, cfg, options, number)
    finally:
        HydraConfig.instance().cfg = previous


def _shown(heading: str, cfg, options: dict, number: int | None) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import Container, OmegaConf, open_dict, read_write

    OmegaConf.set_readonly(cfg.hydra, None)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        if number is not None:  # what Hydra's launchers set
            cfg.hydra.job.num, cfg.hydra.job.id = number, str(number)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg), read_write(cfg.hydra), open_dict(cfg.hydra):
        if options["cfg"] == "job":
            del cfg["hydra"]
        elif options["cfg"] == "hydra":
            for key in [key for key in cfg if key != "hydra"]:
                del cfg[key]
            del cfg.hydra["help"], cfg.hydra["hydra_help"]
    shown = cfg if options["package"] in (None, "_global_") else OmegaConf.select(cfg, options["package"])
    if shown is None:
        raise ExperimentError(f"package '{options['package']}' not found in config")
    if not isinstance(shown, Container):
        return f"# {heading}\n{shown}\n"
    if options["resolve"]:
        OmegaConf.resolve(shown)
    package = f"# @package {options['package']}\n" if options["package"] not in (None, "_global_") else ""
    return f"# {heading}\n{package}{OmegaConf.to_yaml(shown)}"


def _options(flags: Sequence[str]) -> dict:
    """--cfg, --package, --resolve, --config-name and --config-path of the flags (both spellings, `=` or not)."""
    values: dict[str, str | None] = {}
    pairs = iter(flags)
    for flag in pairs:
        name, equals, value = flag.partition("=")
        if name in VALUE_FLAGS:
            values[name] = value if equals else next(pairs, None)
        else:
            values[name] = ""
    if "--config-dir" in values or "-cd" in values:
        raise ExperimentError("--config-dir with -m --cfg is not supported: drop -m and give one job's "
                              "values to see its config")
    shown = values.get("--cfg") or values.get("-c")
    if shown not in CFG_CHOICES:
        raise ExperimentError(f"--cfg {shown or ''}: choose one of {', '.join(CFG_CHOICES)}".replace(" :", ":"))
    config_path = values.get("--config-path") or values.get("-cp") or "../conf"
    return {
        "cfg": shown,
        "package": values.get("--package") or values.get("-p"),
        "resolve": "--resolve" in values,
        "config_name": values.get("--config-name") or values.get("-cn") or "config",
        "config_dir": (ENTRY_POINT_DIR / config_path).resolve(),
    }
