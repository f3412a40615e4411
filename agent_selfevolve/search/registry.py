"""Strategy configs and the strategy registry.

Each strategy has one frozen config dataclass: its defaults are written there once, the strategy's function
takes them as keywords (or a ready config), and the graph keeps the resolved config under one state key
(`CONFIG_KEY`) as plain JSON, so a checkpointed run resumes with exactly the options it started with.
Strategies add themselves with `register_strategy` (the way peft methods register), so a new one needs no edit
here or in the callers that look strategies up by name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Self

CONFIG_KEY = "config"
BUILTIN_MODULES = ("best_of_n", "se_agent", "hgm", "mcts")
"""Modules under `agent_selfevolve.search` that register the shipped strategies (each under its module's name)
when imported."""


@dataclass(frozen=True)
class StrategyConfig:
    """Base of every strategy's options. `resolve` fills run-dependent defaults (e.g. a wave the size of the
    concurrency) before the config is stored in state."""

    def resolve(self, max_concurrency: int) -> Self:
        return self

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> Self:
        """The config kept in a graph state. A hand-built state without `CONFIG_KEY` (a node called directly) is
        read from its top-level keys; a graph's state schema keeps only `CONFIG_KEY`."""
        data = state.get(CONFIG_KEY)
        source: Mapping[str, Any] = data if isinstance(data, Mapping) else state
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in source.items() if k in names})

    @classmethod
    def build(cls, config: Self | None, options: Mapping[str, Any], max_concurrency: int) -> Self:
        """`config` (or the defaults) with `options` on top, resolved; an unknown option raises TypeError."""
        base = config if config is not None else cls()
        return (replace(base, **options) if options else base).resolve(max_concurrency)


@dataclass(frozen=True)
class Strategy:
    name: str
    run: Callable[..., Any]
    """fn(ctx, config=None, *, run_id=None, max_concurrency=4, **options) -> SearchResult"""
    config_cls: type[StrategyConfig]


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(name: str, fn: Callable[..., Any], config_cls: type[StrategyConfig]) -> None:
    """Make `fn` findable by `name`; its signature shows the config's fields, so `help(fn)` lists the options."""
    _REGISTRY[name] = Strategy(name, fn, config_cls)
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                 default=inspect.Parameter.empty if f.default is MISSING else f.default)
               for f in fields(config_cls)]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]


def registered() -> dict[str, Strategy]:
    """Every registered strategy (the shipped ones are imported, and so registered, first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"agent_selfevolve.search.{module}")
    first = [name for name in BUILTIN_MODULES if name in _REGISTRY]  # shipped ones in a fixed order
    return {name: _REGISTRY[name] for name in [*first, *(n for n in _REGISTRY if n not in first)]}


def strategies() -> dict[str, Callable[..., Any]]:
    """Strategy name -> function(ctx, run_id=..., **options) -> SearchResult."""
    return {name: s.run for name, s in registered().items()}
