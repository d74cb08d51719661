"""Every `extra=` key the package logs with is safe: a key that names a LogRecord attribute makes the
logging call itself raise (KeyError), and the error path it was reporting goes silent. That is how a
crashed thread once became a silent zombie (`extra={"thread": name}`)."""
from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "spy_streamer"
STREAK_MODULE = PACKAGE / "monitoring" / "failure_streak.py"
STREAK_METHODS = {"failed", "succeeded"}
RESERVED = set(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", (), None))) | {"message", "asctime"}


def extra_keys(path: Path) -> list[tuple[int, str]]:
    """(line, key) of every key passed in an `extra=` dict, spreads of a module constant resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = None
    # `fields = {...}` literals a call spreads with `**fields`
    literal_dicts = {node.targets[0].id: node.value for node in ast.walk(tree)
                     if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                     and isinstance(node.targets[0], ast.Name)}
    keys = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in STREAK_METHODS:
            # FailureStreak.failed/succeeded pass their keyword arguments on as `extra` keys
            keys += [(node.lineno, keyword.arg) for keyword in node.keywords if keyword.arg is not None]
            continue
        for keyword in node.keywords:
            if keyword.arg != "extra":
                continue
            if not isinstance(keyword.value, ast.Dict):
                pytest.fail(f"{path.name}:{node.lineno}: extra= is not a dict literal; cannot be verified")
            for key, value in zip(keyword.value.keys, keyword.value.values):
                if isinstance(key, ast.Constant):
                    keys.append((node.lineno, key.value))
                    continue
                # `**{key: ... for key in CONSTANT}`: check the constant's names
                if key is None and isinstance(value, ast.DictComp) and isinstance(value.generators[0].iter, ast.Name):
                    module = module or importlib.import_module(".".join(("spy_streamer", *path.relative_to(PACKAGE).with_suffix("").parts)))
                    keys += [(node.lineno, name) for name in getattr(module, value.generators[0].iter.id)]
                    continue
                if key is None and isinstance(value, ast.Name) and value.id in literal_dicts \
                        and all(isinstance(k, ast.Constant) for k in literal_dicts[value.id].keys):
                    keys += [(node.lineno, k.value) for k in literal_dicts[value.id].keys]
                    continue
                if path == STREAK_MODULE and isinstance(value, ast.Name) and value.id == "extra":
                    continue  # the keyword arguments of failed()/succeeded(), checked at their callers
                pytest.fail(f"{path.name}:{node.lineno}: an extra= key that cannot be verified")
    return keys


def test_no_extra_key_shadows_a_logrecord_attribute():
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, key in extra_keys(path):
            assert key not in RESERVED, f"{path.name}:{line}: extra key {key!r} is a LogRecord attribute"
            checked += 1
    assert checked > 30  # the scan really saw the package's log calls


def test_the_check_would_have_caught_the_thread_key():
    with pytest.raises(KeyError):
        logging.getLogger("probe").makeRecord("probe", logging.ERROR, "f", 1, "m", (), None,
                                              extra={"thread": "parquet-writer"})
    assert "thread" in RESERVED
