"""The built-in plugins without pluggy (vortex.pluginmanager.BuiltinPlugins).

A ``vortex run`` with only the built-ins calls their hooks from a table instead
of importing pluggy.  These tests hold the table to pluggy itself: the same
implementations, in the same order, with the same arguments, for every
combination of disabled built-ins and for synthetic plugins that mix every
ordering option; and they check that pluggy reads ``vortex.hookimpl`` exactly
as it reads its own marker.
"""

from __future__ import annotations

import itertools
import random
import sys
import types
from collections.abc import Iterator, Sequence

import pluggy
import pytest

from vortex import hookspecs, pluginmanager
from vortex.errors import PluginError
from vortex.hookimpl_marker import IMPL_ATTRIBUTE, hookimpl
from vortex.pluginmanager import (
    BUILTIN_PLUGINS,
    BuiltinPlugins,
    load_plugins,
    load_plugins_for_one_run,
)

HOOKS = [name for name in dir(hookspecs) if name.startswith("vortex_")]


def pluggy_calls(pm: pluggy.PluginManager, hook: str) -> list[tuple[str, object, tuple[str, ...]]]:
    impls = reversed(getattr(pm.hook, hook).get_hookimpls())
    return [(impl.plugin_name, impl.function, tuple(impl.argnames)) for impl in impls]


def table_calls(table: BuiltinPlugins, hook: str) -> list[tuple[str, object, tuple[str, ...]]]:
    return [(i.plugin_name, i.function, i.argnames) for i in table.implementations(hook)]


def subsets(names: Sequence[str]) -> Iterator[tuple[str, ...]]:
    for size in range(len(names) + 1):
        yield from itertools.combinations(names, size)


def test_the_hooks_are_the_ones_the_specs_declare() -> None:
    assert {"vortex_prepare", "vortex_post_cgroup", "vortex_on_exit"} <= set(HOOKS)


@pytest.mark.parametrize("disabled", list(subsets(list(BUILTIN_PLUGINS))), ids=str)
def test_the_table_calls_what_pluggy_calls_in_the_same_order(disabled: tuple[str, ...]) -> None:
    pm = load_plugins(disabled, entry_points=False)
    table = BuiltinPlugins(name for name in BUILTIN_PLUGINS if name not in disabled)
    for hook in HOOKS:
        assert table_calls(table, hook) == pluggy_calls(pm, hook), hook


def test_every_builtin_hook_is_in_the_table() -> None:
    # A guard against a table that is "equal" because both sides are empty.
    table = BuiltinPlugins(BUILTIN_PLUGINS)
    assert [i.plugin_name for i in table.implementations("vortex_prepare")] == [
        "limits",
        "security",
        "logging",
    ]
    assert [i.function.__name__ for i in table.implementations("vortex_post_cgroup")] == [
        "post_cgroup_id_maps",
        "vortex_post_cgroup",
    ]


OPTION_SETS = [
    {},
    {"tryfirst": True},
    {"trylast": True},
    {"specname": "vortex_on_exit"},
    {"optionalhook": True},
    {"wrapper": True},
    {"hookwrapper": True},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_pluggy_reads_our_marker_as_its_own(options: dict[str, object]) -> None:
    def ours() -> None: ...

    def theirs() -> None: ...

    if options:
        hookimpl(**options)(ours)  # type: ignore[call-overload]
        pluggy.HookimplMarker("vortex")(**options)(theirs)  # type: ignore[call-overload]
    else:
        hookimpl(ours)
        pluggy.HookimplMarker("vortex")(theirs)
    assert getattr(ours, IMPL_ATTRIBUTE) == getattr(theirs, IMPL_ATTRIBUTE)


def synthetic_plugin(name: str, rng: random.Random) -> types.ModuleType:
    """A module with a few implementations of ``vortex_on_exit`` under random options."""
    module = types.ModuleType(f"vortex_test_synthetic_{name}")
    for index in range(rng.randint(1, 3)):
        order = rng.choice(["plain", "tryfirst", "trylast"])

        def implementation(container: object, result: object, extra: int = 0) -> None: ...

        implementation.__name__ = implementation.__qualname__ = f"impl_{index}"
        options = {"specname": "vortex_on_exit"}
        if order != "plain":
            options[order] = True
        hookimpl(**options)(implementation)  # type: ignore[call-overload]
        setattr(module, f"impl_{index}", implementation)
    return module


@pytest.mark.parametrize("seed", range(40))
def test_ordering_matches_pluggy_for_any_mix_of_options(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    names = [f"p{i}" for i in range(rng.randint(2, 6))]
    monkeypatch.setattr(pluginmanager, "BUILTIN_PLUGINS", {})
    for name in names:
        module = synthetic_plugin(name, rng)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        pluginmanager.BUILTIN_PLUGINS[name] = module.__name__
    pm = load_plugins(entry_points=False)
    table = BuiltinPlugins(names)
    assert table_calls(table, "vortex_on_exit") == pluggy_calls(pm, "vortex_on_exit")
    assert len(table.implementations("vortex_on_exit")) >= len(names)


def test_one_run_uses_the_table_only_when_nothing_else_can_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pluginmanager, "_may_have_entry_points", lambda group="vortex": False)
    table = load_plugins_for_one_run(["net"])
    assert isinstance(table, BuiltinPlugins)
    assert table.names == ("limits", "logging", "security")

    class Extra:
        __name__ = "extra"

    assert isinstance(load_plugins_for_one_run(extra=[Extra()]), pluggy.PluginManager)
    monkeypatch.setattr(pluginmanager, "_may_have_entry_points", lambda group="vortex": True)
    assert isinstance(load_plugins_for_one_run(), pluggy.PluginManager)
    assert isinstance(load_plugins_for_one_run(entry_points=False), BuiltinPlugins)


def test_one_run_rejects_an_unknown_plugin_name_like_pluggy_loading_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pluginmanager, "_may_have_entry_points", lambda group="vortex": False)
    with pytest.raises(PluginError) as from_table:
        load_plugins_for_one_run(["nope"])
    with pytest.raises(PluginError) as from_pluggy:
        load_plugins(["nope"])
    assert str(from_table.value) == str(from_pluggy.value)
    assert "known plugins are limits, logging, net, security" in str(from_table.value)
