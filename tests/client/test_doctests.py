"""The ``>>>`` examples in the client's docstrings run (those needing a server are skipped)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "rle", "errors", "images", "types", "_protocol", "client", "aio", "cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(
        "segment_everything_client" if name == "__init__" else f"segment_everything_client.{name}"
    )
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
