"""The executor registry: task type -> executor.

Adding a task type is one new module in this package that decorates its executor with
`@register("type")`; every module here is imported when the registry is first used.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from worker import exceptions
from worker.config import WorkerConfig
from worker.executors.base import Executor, Job, ProgressFn

Factory = Callable[[WorkerConfig], Executor]

_FACTORIES: dict[str, Factory] = {}
_loaded = False


def register(task_type: str) -> Callable[[Factory], Factory]:
    """Class decorator (or factory decorator): `task_type` tasks run in what it builds."""

    def add(factory: Factory) -> Factory:
        if task_type in _FACTORIES and _FACTORIES[task_type] is not factory:
            raise RuntimeError(f"two executors for task type {task_type!r}")
        _FACTORIES[task_type] = factory
        return factory

    return add


def known() -> dict[str, Factory]:
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return dict(_FACTORIES)


def create(config: WorkerConfig) -> dict[str, Executor]:
    """One executor per allowed task type; ConfigError for a type nobody runs."""
    factories = known()
    missing = [t for t in config.task_types if t not in factories]
    if missing:
        raise exceptions.ConfigError(
            field="allow-type",
            detail=f"no executor for {', '.join(missing)}; this worker runs "
            f"{', '.join(sorted(factories)) or 'nothing'}",
        )
    return {t: factories[t](config) for t in config.task_types}


__all__ = ["Executor", "Factory", "Job", "ProgressFn", "create", "known", "register"]
