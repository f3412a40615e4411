"""Strategy configs and the registry: one default per option, configs kept in graph state under one key, new
strategies found by name without editing the callers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

import pytest

from agent_selfevolve.search.registry import CONFIG_KEY, StrategyConfig, register_strategy, registered, strategies


def test_the_shipped_strategies_are_registered_in_order_with_their_configs() -> None:
    got = registered()
    assert list(got)[:4] == ["best_of_n", "se_agent", "hgm", "mcts"]
    assert list(strategies())[:4] == ["best_of_n", "se_agent", "hgm", "mcts"]
    for strategy in got.values():
        params = inspect.signature(strategy.run).parameters
        for f in fields(strategy.config_cls):  # help(fn) shows every option with the config's own default
            assert params[f.name].default == strategy.config_cls().__getattribute__(f.name), (strategy.name, f.name)


def test_config_from_state_prefers_the_config_key_and_rejects_unknown_options() -> None:
    cls = registered()["se_agent"].config_cls
    defaults = cls()
    first = fields(cls)[0].name
    other = getattr(defaults, first) + 1 if isinstance(getattr(defaults, first), int) else getattr(defaults, first)
    state = {CONFIG_KEY: {first: other}, first: "ignored: the config key wins"}
    assert getattr(cls.of(state), first) == other
    assert getattr(cls.of({first: other}), first) == other  # a hand-built state: top-level keys
    with pytest.raises(TypeError):
        cls.build(None, {"no_such_option": 1}, max_concurrency=2)


def test_a_new_strategy_registers_itself_and_is_found_by_name() -> None:
    @dataclass(frozen=True)
    class EchoConfig(StrategyConfig):
        times: int = 2

    def echo(ctx: object, config: EchoConfig | None = None, **options: object) -> int:
        return EchoConfig.build(config, options, 1).times

    register_strategy("echo_test", echo, EchoConfig)
    try:
        assert strategies()["echo_test"](None, times=5) == 5
        assert inspect.signature(echo).parameters["times"].default == 2
    finally:
        from agent_selfevolve.search import registry

        registry._REGISTRY.pop("echo_test", None)
