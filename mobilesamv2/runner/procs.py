"""The process tree of a tritonserver: its Python backend stubs, and reaping all of it.

Triton's Python backend runs every model instance in a stub process (``triton_python_backend_stub``), a child
of tritonserver in tritonserver's process group. When tritonserver dies the stubs are orphaned and may keep
running (and holding memory); Python backend 24.10 also never restarts a stub that died. Whoever starts
tritonserver therefore starts it as the leader of a process group of its own and, once it has exited, kills
what is left of that group (:func:`kill_group`).

Linux only (reads ``/proc``); standard library only: the container's entrypoint (Python 3.10) imports this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    """``R``, ``S``, ``T`` (stopped), ``Z`` (zombie), ..."""


def proc_info(pid: int) -> ProcInfo | None:
    """``/proc/<pid>/stat``; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, the rest follows the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), fields[0])


def all_processes() -> list[ProcInfo]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                found.append(info)
    return found


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    return sorted(p.pid for p in all_processes() if p.pgid == pgid and p.state != "Z")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass(frozen=True)
class Stub:
    """A stub process: ``triton_python_backend_stub <model file> <shm region> ... <instance name> ...``."""

    pid: int
    model: str
    instance: str
    state: str = "S"
    """``T``/``t``: stopped (SIGSTOP) or traced: it serves nothing."""

    @property
    def serving(self) -> bool:
        return self.state not in ("T", "t", "Z", "X")


def stubs_of(server_pid: int) -> list[Stub]:
    """The stub processes tritonserver ``server_pid`` started (its children named like the stub), by model.

    The model is the folder of the model file (``<repository>/<model>/<version>/model.py``); the instance name
    (``<model>_<group>_<index>``) is the 9th argument.
    """
    stubs = []
    for info in all_processes():
        if info.ppid != server_pid or info.state == "Z":
            continue
        args = cmdline(info.pid)
        if not args or not args[0].endswith(STUB_NAME):
            continue
        model = Path(args[1]).parent.parent.name if len(args) > 1 else ""
        instance = args[8] if len(args) > 8 else ""
        stubs.append(Stub(info.pid, model, instance, info.state))
    return sorted(stubs, key=lambda s: (s.model, s.instance))


def kill_group(pgid: int, timeout: float = 10.0, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process of group ``pgid`` until none is left (or ``timeout`` passes); returns the
    pids that were still there. Stopped (SIGSTOP) processes die of SIGKILL too. A zombie left behind is reaped
    by its parent (or by whoever runs as PID 1), not here."""
    first = group_members(pgid)
    if not first:
        return []
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        if not group_members(pgid) or time.monotonic() > deadline:
            return first
        time.sleep(0.05)


def stub_census(server_pid: int) -> dict[str, int]:
    """Running (not stopped, not zombie) stub processes per model of tritonserver ``server_pid``."""
    counts: dict[str, int] = {}
    for stub in stubs_of(server_pid):
        counts[stub.model] = counts.get(stub.model, 0) + int(stub.serving)
    return counts


def lost_stubs(expected: dict[str, int], now: dict[str, int]) -> str | None:
    """Which model has fewer running stubs than ``expected`` (``"model now/expected, ..."``); None: none."""
    lost = [f"{m} {now.get(m, 0)}/{n}" for m, n in expected.items() if now.get(m, 0) < n]
    return ", ".join(lost) or None
