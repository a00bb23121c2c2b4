"""The import graph of a package, every import counted (those inside functions too): its modules, its import
cycles, and its floors, the longest chain of imports from a module down to one that imports nothing of the package.

    python benchmarks/import_floors.py [PACKAGE_FOLDER]      (default: mnist_exp)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_names(folder: Path) -> dict[str, Path]:
    names = {}
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports (a name imported from a module counts as that module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "mnist_exp").resolve()
    modules = module_names(folder)
    graph = {name: imports(name, path, modules) for name, path in modules.items()}
    cycles: set[tuple[str, ...]] = set()
    chains: dict[str, list[str]] = {}

    def chain(name: str, path: tuple[str, ...]) -> list[str]:
        if name in path:  # a cycle: counted once, broken here
            cycles.add(tuple(sorted(set(path[path.index(name):]))))
            return []
        if name not in chains:
            below = [chain(other, (*path, name)) for other in sorted(graph[name])]
            chains[name] = [name, *max(below, key=len, default=[])]
        return chains[name]

    longest = max((chain(name, ()) for name in sorted(modules)), key=len)
    print(f"{len(modules)} modules, {len(cycles)} import cycles, {len(longest)} floors")
    for cycle in sorted(cycles):
        print("cycle:", " <-> ".join(cycle))
    print("longest chain:", " -> ".join(longest))


if __name__ == "__main__":
    main()
