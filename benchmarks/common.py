"""What every benchmark script shares: statistics, number formatting, Markdown tables, the machine a run was
on, and publishing its results.

A script measures, then calls :func:`publish` with a small summary (the numbers its tables show, not every
request) and a ``render`` function that turns that summary into Markdown tables. :func:`publish` saves the
summary as ``benchmarks/results/<name>.json`` and fills the tables into ``BENCHMARKS.md`` between the
markers ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``; the prose around them is written by hand and
never touched. ``python -m benchmarks.<script> --render`` re-renders a saved summary without measuring.

A script may also fill single values into hand-written text (the Targets table): ``values(results)`` returns
``{key: text}`` and each goes between ``<!-- <name>:<key> -->`` and ``<!-- /<name>:<key> -->``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from loadtest.stats import percentile

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"
"""The repository the test suite builds from seeded random weights (``tests/conftest.py``)."""
PACKAGES = ("torch", "onnxruntime", "numpy", "opencv-python-headless", "nvidia-pytriton", "tritonclient")


# --- statistics and formatting ------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float:
    return percentile(values, 50)


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    """``1,234.5`` style; an en dash for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def verdict(met: bool) -> str:
    """A Targets table's status cell."""
    return "**met**" if met else "**not met**"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (cells are str()-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- where and how a run was made ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, object]:
    """The machine, the package versions and the commit of this run."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpu": cpu_model(),
        "cpus": cpus,
        "memory_gib": round(memory / 2**30, 1),
        "versions": versions,
        "commit": git_commit(),
    }


def provenance(results: dict) -> str:
    """The line every section starts with: when, on what, at which commit (and, for numbers carried over
    from an earlier runner, the commit that published them), by which command."""
    m = results.get("machine", {})
    details = [
        f"{m['cpus']} CPUs" if m.get("cpus") else "",
        f"{m['memory_gib']} GiB" if m.get("memory_gib") else "",
    ]
    on = m.get("cpu", "?") + (f" ({', '.join(d for d in details if d)})" if any(details) else "")
    published = results.get("published")
    published = f" (published in {published})" if published and published != m.get("commit") else ""
    return (
        f"Measured {results.get('finished', '?')} on {on}, commit {m.get('commit', '?')}{published}, by "
        f"`{results.get('command', '?')}`."
    )


def new_results(**settings: object) -> dict:
    """The start of a results dict: the command that made it, the machine, the settings (paths inside the
    repository relative to its root)."""
    command = " ".join(shlex.quote(a) for a in ["python", "-m", _module_name(), *sys.argv[1:]])
    settings = {k: _relative(v) if isinstance(v, Path) else v for k, v in settings.items()}
    return {"command": command, "machine": machine(), "settings": settings}


def results_for(args: argparse.Namespace) -> dict:
    """:func:`new_results` with every option of the script's command line as its settings."""
    return new_results(**{k: v for k, v in vars(args).items() if k != "render"})


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


# --- publishing ---------------------------------------------------------------------------------------------


def argument_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """A script's command line: ``--repository`` (default: the test suite's build from seeded random
    weights) and ``--render`` (fill BENCHMARKS.md from the saved summary, measuring nothing); the script adds
    its own options."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=(doc or "").split("\n\n")[0]
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument(
        "--render", action="store_true", help="re-render BENCHMARKS.md from the saved summary"
    )
    return parser


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def fill_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``name``'s markers replaced by ``body``. The markers must exist: where a
    section goes, and the prose around it, is the job of whoever writes BENCHMARKS.md."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise KeyError(f"BENCHMARKS.md has no {start} ... {end}: add them where the tables belong")
    return text[: text.index(start) + len(start)] + "\n" + body.strip() + "\n" + text[text.index(end) :]


def fill_values(text: str, name: str, values: dict[str, str]) -> str:
    """``text`` with each ``values[key]`` between ``<!-- name:key -->`` and ``<!-- /name:key -->`` (every
    occurrence); a key without its markers is refused, as a section is."""
    for key, value in values.items():
        start, end = f"<!-- {name}:{key} -->", f"<!-- /{name}:{key} -->"
        if start not in text or end not in text:
            raise KeyError(f"BENCHMARKS.md has no {start}...{end}: add them where the value belongs")
        filled = start + value + end
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _, f=filled: f, text, flags=re.DOTALL)
    return text


def publish(
    name: str,
    results: dict,
    render: Callable[[dict], str],
    out: Path = BENCHMARKS_MD,
    json_path: Path | None = None,
    values: Callable[[dict], dict[str, str]] | None = None,
) -> None:
    """Stamp ``results`` finished, save them (``benchmarks/results/<name>.json``), fill ``out``'s section (and
    the ``values``) and print it."""
    results.setdefault("finished", time.strftime("%Y-%m-%d %H:%M %Z"))
    json_path = json_path or RESULTS_DIR / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    body = render(results)
    if out.exists() or out == BENCHMARKS_MD:
        text = fill_section(out.read_text(), name, body)
        out.write_text(fill_values(text, name, values(results)) if values else text)
    else:
        start, end = markers(name)
        out.write_text(f"{start}\n{body}\n{end}\n")
    print(body)


def rerender(
    name: str,
    render: Callable[[dict], str],
    out: Path = BENCHMARKS_MD,
    values: Callable[[dict], dict[str, str]] | None = None,
) -> int:
    """Fill ``out``'s section (and the ``values``) from the saved summary (a script's ``--render``); returns
    0."""
    results = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    text = fill_section(out.read_text(), name, render(results))
    out.write_text(fill_values(text, name, values(results)) if values else text)
    print(render(results))
    return 0


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
