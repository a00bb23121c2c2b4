"""Whether a dotted module path can be found without running it or its packages (they may import numpy or
TensorFlow, which config checks must not pay for)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys


def module_found(dotted: str) -> bool:
    """Whether `dotted` names a module, found without running it or its packages (they may import numpy)."""
    parts = dotted.split(".")
    search_path = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module = sys.modules.get(name)
        if module is not None:
            spec = getattr(module, "__spec__", None)
            search_path = getattr(module, "__path__", None)
        else:
            spec = (importlib.util.find_spec(name) if depth == 1
                    else importlib.machinery.PathFinder.find_spec(name, search_path))
            search_path = spec.submodule_search_locations if spec is not None else None
        if module is None and spec is None:
            return False
        if depth < len(parts) and search_path is None:
            return False  # a module, not a package: it has no submodules
    return True
