"""The op registry with a broken third-party plugin: the built-in ops still load, and the broken
plugin is named, with its error, wherever an op it may have provided is missing."""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint

import pytest

from engine import registry
from engine.errors import RecipeError, UnknownOpError
from engine.graph import check_recipe_offline

BROKEN = EntryPoint(name="mylab", value="mylab_ops_not_installed:register", group=registry.ENTRY_POINT_GROUP)
REPORT = (r"plugin 'mylab' \(mylab_ops_not_installed:register\) failed to load: "
          r"ModuleNotFoundError: No module named 'mylab_ops_not_installed'")


@pytest.fixture
def broken_plugin(monkeypatch) -> list[str]:
    """A registry about to load, whose one plugin raises on import; returns the groups read."""
    registry.op_names()  # the built-in ops are imported once per process, as in any session
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_failed_plugins", [])
    groups: list[str] = []

    def entry_points(group: str) -> list[EntryPoint]:
        groups.append(group)
        return [BROKEN]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    return groups


def test_a_broken_plugin_warns_and_the_built_in_ops_still_load(broken_plugin):
    with pytest.warns(UserWarning, match=REPORT + "; its ops are unavailable"):
        assert registry.get_op("core.sum").name == "core.sum"
    assert {"core.select", "eels.align_zlp", "pdf.fit"} <= set(registry.op_names())


def test_a_missing_op_names_the_failed_plugin_and_its_error(broken_plugin):
    with pytest.warns(UserWarning):
        registry.op_names()
    with pytest.raises(UnknownOpError, match=rf"unknown op 'mylab\.fit'; {REPORT}, so its ops are missing"):
        registry.get_op("mylab.fit")
    with pytest.raises(UnknownOpError, match=rf"'core\.summ' \(did you mean 'core\.sum'.*\?\); {REPORT}"):
        registry.get_op("core.summ")


def test_a_second_call_retries_nothing_and_keeps_the_report(broken_plugin):
    with pytest.warns(UserWarning):
        registry.get_op("core.sum")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the plugin is not imported again
        registry.get_op("core.mean")
    assert broken_plugin == [registry.ENTRY_POINT_GROUP]
    with pytest.raises(UnknownOpError, match=REPORT):
        registry.get_op("mylab.fit")


def test_a_recipe_calling_the_plugin_names_it(broken_plugin, write_recipe):
    recipe = write_recipe("""
        version: 1
        name: plugin-op
        steps:
          - id: fit
            op: mylab.fit
        outputs:
          fit: {zone: derived}
    """)
    expected = rf"steps\[0\]\.op: unknown op 'mylab\.fit'; {REPORT}"
    with pytest.warns(UserWarning), pytest.raises(RecipeError, match=expected):
        check_recipe_offline(recipe)
