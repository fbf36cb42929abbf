"""Serving side: a local Triton launcher and the Python-based backends it installs."""
