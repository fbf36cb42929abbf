"""Fixtures of the launcher tests: ``triton_server_factory`` lives in tests/conftest.py (shared)."""
