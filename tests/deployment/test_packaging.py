"""A fresh `pip install .` (what scripts/run_streamer.sh sets up) must bring every library the package
imports: the test venv has many more (the test extras pull in numpy, pandas, ...), so a missing
declaration passes every other test and fails only on a user's machine."""
from __future__ import annotations

import ast
import configparser
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "spy_streamer"
# Imported only where `storage.kind: iceberg` is configured, and declared as the `lake` extra.
EXTRA_ONLY = {"lake": {"pyiceberg", "requests"}}   # requests: the REST catalog's bound (storage/lake_bounds.py)


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {name for name in modules if name not in sys.stdlib_module_names and name != "spy_streamer"}


def declared(section: str, key: str) -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return [line.strip() for line in config[section][key].splitlines() if line.strip()]


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` bring, with their own (unconditional) requirements, transitively."""
    closure, todo = set(), [distribution_name(requirement) for requirement in requirements]
    while todo:
        name = canonical(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for requirement in metadata.requires(name) or ():
            if "extra ==" not in requirement:
                todo.append(distribution_name(requirement))
    return closure


def test_every_library_the_package_imports_comes_with_a_plain_install():
    """Regression: seen_bars and compaction import numpy, which no declared requirement brings (pyarrow no
    longer needs it): the daemon's writer could not even import on a fresh machine."""
    base = installed_closure(declared("options", "install_requires"))
    lake = installed_closure(declared("options.extras_require", "lake"))
    providers = metadata.packages_distributions()
    missing = []
    for module in sorted(imported_top_level_modules()):
        distributions = {canonical(name) for name in providers.get(module, [module])}
        allowed = base | (lake if any(module in modules for modules in EXTRA_ONLY.values()) else set())
        if not distributions & allowed:
            missing.append(f"{module} (from {', '.join(sorted(distributions))})")
    assert missing == []
