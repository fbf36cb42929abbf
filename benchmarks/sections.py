"""BENCHMARKS.md is written by several scripts: each owns the part between its two markers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def write_section(path: Path, start: str, end: str, body: str) -> None:
    """Replace the text between ``start`` and ``end`` in ``path`` (appended when absent); the rest is kept."""
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def publish(
    results: dict, json_path: Path, out: Path, start: str, end: str, render: Callable[[dict], str]
) -> None:
    """Stamp ``results`` finished, save them as JSON, write their section of ``out`` and print it."""
    results["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_section(out, start, end, render(results))
    print(render(results))


def rerender(json_path: Path, out: Path, start: str, end: str, render: Callable[[dict], str]) -> int:
    """Re-write ``out``'s section from saved results (a script's ``--render``); prints it, returns 0."""
    results = json.loads(json_path.read_text())
    write_section(out, start, end, render(results))
    print(render(results))
    return 0
