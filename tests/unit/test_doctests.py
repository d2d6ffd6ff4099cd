"""The examples in the package's docstrings are true (each module's doctests run here)."""

import doctest
import importlib
import pkgutil

import pytest

import dsw_ray

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(dsw_ray.__path__, "dsw_ray.")
    if m.name != "dsw_ray.__main__"  # importing it runs the CLI
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
