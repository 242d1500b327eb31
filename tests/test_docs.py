"""The plugin reference (docs/plugin-hooks.md) keeps up with the plugin API.

Adding a hook, a hook parameter, a setup operation or a RunResult field
without documenting it fails here (the datasette model: a heading with the
exact signature per hook).
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pluggy
import pytest

from vortex import hookspecs, ops, records
from vortex.result import RunResult

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin-hooks.md"

HOOKS = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("vortex_")
)
OPS = typing.get_args(ops.SetupOp)

# "## vortex_on_exit(container, result)" or "### ..."; the text must be exactly this.
HOOK_HEADING = re.compile(r"^#{2,3} (vortex_\w*)\((.*)\)$", re.MULTILINE)
# "### `BindMount(source, target, readonly=False, recursive=True)`"
OP_HEADING = re.compile(r"^#{2,3} `(\w+)\((.*)\)`$", re.MULTILINE)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def hook_headings() -> list[tuple[str, list[str]]]:
    return [
        (name, [arg.strip() for arg in args.split(",") if arg.strip()])
        for name, args in HOOK_HEADING.findall(doc_text())
    ]


def spec_argnames(hook: str) -> list[str]:
    """The arguments pluggy calls the hook with, as the Runtime's manager sees them."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    spec = getattr(pm.hook, hook).spec
    assert spec is not None, f"{hook} is not marked with @hookspec"
    return list(spec.argnames)


def test_there_are_hooks_and_operations() -> None:
    assert len(HOOKS) >= 5
    assert len(OPS) >= 6


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_heading_with_its_exact_signature(hook: str) -> None:
    argnames = spec_argnames(hook)
    assert argnames == list(inspect.signature(getattr(hookspecs, hook)).parameters)
    documented = [args for name, args in hook_headings() if name == hook]
    expected = f"### {hook}({', '.join(argnames)})"
    assert documented, f"{DOC.name} has no heading for {hook}: add '{expected}'"
    assert len(documented) == 1, f"{DOC.name} has {len(documented)} headings for {hook}"
    assert documented[0] == argnames, f"the heading of {hook} must read '{expected}'"


def test_every_hook_heading_is_a_hook() -> None:
    stale = [name for name, _args in hook_headings() if name not in HOOKS]
    assert not stale, f"{DOC.name} documents hooks that vortex.hookspecs does not have: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_with_every_parameter(hook: str) -> None:
    docstring = inspect.getdoc(getattr(hookspecs, hook))
    assert docstring, f"vortex/hookspecs.py: {hook} has no docstring"
    for arg in spec_argnames(hook):
        assert f":param {arg}:" in docstring, f"{hook}'s docstring lacks ':param {arg}:'"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_setup_operation_is_documented_with_its_fields(op: type) -> None:
    documented = [args for name, args in OP_HEADING.findall(doc_text()) if name == op.__name__]
    fields = [field.name for field in records.fields(op)]
    assert documented, f"{DOC.name} has no heading '### `{op.__name__}(...)`'"
    names = [arg.split("=")[0].strip() for arg in documented[0].split(",") if arg.strip()]
    assert names == fields, f"the heading of {op.__name__} must list its fields {fields}"


@pytest.mark.parametrize("field", [f.name for f in records.fields(RunResult)])
def test_run_result_field_is_documented(field: str) -> None:
    assert f"`{field}`" in doc_text(), f"{DOC.name} does not describe RunResult.{field}"
