"""The argument parser of every command but `python -m mnist_exp` (Hydra's): argparse's, with the project's one-line
errors (exit 2) instead of a usage block."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from mnist_exp.system.errors import exit_with


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line; `usage_hint` (the arguments after prog), when given, ends that line."""

    def __init__(self, *args: Any, usage_hint: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_hint = usage_hint

    def error(self, message: str) -> NoReturn:
        exit_with(f"{message} (usage: {self.prog} {self.usage_hint})" if self.usage_hint else message)
