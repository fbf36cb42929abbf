"""The "Failure recovery" section of BENCHMARKS.md from a synthetic results file (no server): the table, and
that rewriting it keeps the other sections."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is not installed; it lives at the repository root
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import failure_recovery as fr  # noqa: E402


def results() -> dict:
    def run(scenario: str, recovery: float, by: str, errors: list[str]) -> dict:
        return {
            "scenario": scenario,
            "recovery_s": recovery,
            "detect_s": 1.0,
            "restart_s": recovery - 3.0,
            "detected_by": by,
            "requests": 20,
            "failed": 5,
            "slowest_s": 14.5,
            "errors": errors,
        }

    return {
        "settings": {"interval": 3.0, "client_timeout": 15.0, "drain": 3.0, "repeats": 2},
        "machine": "x86_64, 2 CPUs",
        "repository": "work/test-cache/model_repository",
        "command": "flock /tmp/heavy.lock .venv/bin/python benchmarks/failure_recovery.py --repeats 2",
        "runs": [
            run("image_encoder stub kill -9", 14.0, "stub census", ["ServerError"]),
            run("image_encoder stub kill -9", 18.0, "stub census", ["ModelNotReadyError"]),
            run("image_encoder stub SIGSTOP, probes only", 21.0, "probes", []),
        ],
    }


def test_table_rows_are_medians_with_the_max() -> None:
    block = fr.render(results())
    assert block.startswith(fr.START) and block.rstrip().endswith(fr.END)
    assert "## Failure recovery" in block
    assert (
        "| image_encoder stub kill -9 | 16.0 (18.0) | stub census | 1.0 (1.0) | 13.0 (15.0) | 10 / 40 |"
        in block
    )
    assert "| image_encoder stub SIGSTOP, probes only | 21.0 (21.0) | probes |" in block
    assert "Worst recovery 21.0 s" in block and "`ModelNotReadyError`, `ServerError`" in block
    assert "benchmarks/failure_recovery.py --repeats 2" in block


def test_the_section_is_appended_once_then_replaced() -> None:
    document = "# Benchmarks\n\n## Other\n\nkept\n"
    first = fr.merge_into(document, fr.render(results()))
    assert first.startswith(document.rstrip("\n")) and first.count(fr.START) == 1
    again = fr.merge_into(first + "\n## After\n\nalso kept\n", fr.render(results()).replace("16.0", "99.0"))
    assert again.count(fr.START) == 1 and "99.0 (18.0)" in again and "16.0 (18.0)" not in again
    assert "## Other\n\nkept" in again and "## After\n\nalso kept" in again
