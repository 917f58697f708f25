"""Reward functions: plain Python `fn(prompts, completions) -> one float per completion`, on decoded text.

PPO takes one as `reward_model.function`, `align eval` as its judge (`--judge rule:SPEC`). Both name it
`module:function` or `path/to/file.py:function`, load it here and call it through `scores`, so a spec or a return
value that one accepts the other accepts too.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from align.errors import ConfigError

RewardFunction = Callable[[list[str], list[str]], list[float]]


def spec_problem(spec: str) -> str | None:
    """What is wrong with a spec that can be seen without running its module, if anything."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name.isidentifier():
        return f"expected 'module:function' or 'path/to/file.py:function', got {spec!r}"
    if source.endswith(".py"):
        return None if Path(source).is_file() else f"file {source!r} not found"
    try:
        found = importlib.util.find_spec(source)
    except (ImportError, ValueError):
        found = None
    return None if found else f"module {source!r} not found (a file path ending in .py also works)"


def load(spec: str, option: str) -> RewardFunction:
    """The function a spec names, checked to be callable. Errors are ConfigErrors that start with `option`."""
    problem = spec_problem(spec)
    if problem:
        raise ConfigError(f"{option}: {problem}")
    source, name = spec.rsplit(":", 1)
    try:
        if source.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(source).stem, source)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except ImportError as e:
        raise ConfigError(f"{option}: importing {source!r} failed: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{option}: {source!r} has no function {name!r}")
    return fn


def scores(fn: RewardFunction, prompts: list[str], completions: list[str], option: str) -> list[float]:
    """fn(prompts, completions) as floats, checked to be one per completion."""
    returned = fn(prompts, completions)
    if not isinstance(returned, (list, tuple)) or len(returned) != len(completions):
        length = len(returned) if hasattr(returned, "__len__") else "?"
        raise ConfigError(f"{option}: must return one float per completion ({len(completions)}), got "
                          f"{type(returned).__name__} of length {length}")
    return [float(score) for score in returned]
