"""The ``>>>`` examples in the client's docstrings run (those needing a server are skipped)."""

from __future__ import annotations

import doctest
import importlib

import pytest

# Every module with ``>>>`` examples (the CLI has none: tests/client/test_client.py runs it).
MODULES = ["__init__", "errors", "images", "types", "protocol", "client", "aio", "replicas"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(
        "segment_everything_client" if name == "__init__" else f"segment_everything_client.{name}"
    )
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples left to run"
    assert result.failed == 0


def test_contract_examples_run():
    import segment_everything_contract
    from segment_everything_contract import rle

    for module in (segment_everything_contract, rle):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
