"""``mobilesamv2-serve``: build the model repository if needed, start the wheel's tritonserver on it and keep
it serving (probes, restarts) until Ctrl-C or SIGTERM.

The server process, the supervision loop and the security options are the ones the container entrypoint
uses (:mod:`mobilesamv2.runner.server`, :mod:`~mobilesamv2.runner.supervisor`,
:mod:`~mobilesamv2.runner.hardening`); only the defaults differ: here the management APIs are open unless
``--restrict-management-apis``, and a failing server is restarted in place.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mobilesamv2.runner.hardening import HardeningError, Security, add_security_arguments
from mobilesamv2.runner.local import (
    DEFAULT_MODEL_REPOSITORY,
    PYTHON_ENV_VAR,
    WORK_DIR,
    TritonServer,
    build_repository_if_missing,
)
from mobilesamv2.runner.server import tail
from mobilesamv2.runner.supervisor import Supervisor, serve

GENERATED_KEY_FILE = WORK_DIR / "triton" / "admin-key"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mobilesamv2-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--host", default="127.0.0.1", help="address all endpoints bind to")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument(
        "--build-if-missing",
        dest="build",
        action="store_true",
        default=True,
        help="export the ONNX models first if image_encoder/1/model.onnx is missing (default)",
    )
    parser.add_argument("--no-build", dest="build", action="store_false", help="never run the export step")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, default=None, help="server log (default: work/logs/...)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--exit-timeout-secs", type=int, default=10, help="how long SIGTERM drains requests")
    parser.add_argument(
        "--python-env",
        type=Path,
        default=None,
        help="virtual environment the Python models run in, e.g. work/container-venv "
        f"(scripts/container_env.sh: the image's Python 3.10); default ${PYTHON_ENV_VAR}, else this one",
    )
    add_security_arguments(parser, os.environ, restrict_by_default=False)
    supervision = parser.add_argument_group(
        "self-healing",
        "probe the server with real inferences (python -m mobilesamv2.runner.probe) and restart tritonserver "
        "when it stops serving: a model's stub process that died or hangs is not restarted by Triton",
    )
    supervision.add_argument(
        "--no-supervise", dest="supervise", action="store_false", help="only report a dead server and exit"
    )
    supervision.add_argument("--probe-interval", type=float, default=15.0, help="seconds between probes")
    supervision.add_argument(
        "--probe-retry-interval", type=float, default=2.0, help="seconds between probes while failing"
    )
    supervision.add_argument("--probe-timeout", type=float, default=15.0, help="deadline of one probe")
    supervision.add_argument(
        "--restart-after", type=int, default=3, metavar="K", help="restart after K failed probes in a row"
    )
    supervision.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="give up (exit 1) after this many restarts without a healthy probe in between",
    )
    supervision.add_argument(
        "--restart-drain", type=float, default=5.0, help="seconds a restart lets in-flight requests finish"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``mobilesamv2-serve``: build the repository if needed, start Triton, serve until Ctrl-C/SIGTERM."""
    args = parse_args(argv)
    repository = args.model_repository.resolve()
    if args.build:
        build_repository_if_missing(repository)
    try:
        security = Security.from_args(args, os.environ, generated_key_file=GENERATED_KEY_FILE)
        server = TritonServer(
            repository,
            host=args.host,
            http_port=args.http_port or None,
            grpc_port=args.grpc_port or None,
            metrics_port=args.metrics_port or None,
            log_verbose=args.log_verbose,
            startup_timeout=args.startup_timeout,
            exit_timeout_s=args.exit_timeout_secs,
            log_path=args.log_file,
            python_env=args.python_env,
            restriction=security.restriction,
            grpc_tls=security.tls,
        )
    except HardeningError as exc:
        print(f"mobilesamv2-serve: {exc}", file=sys.stderr)
        return 2
    try:
        server.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"mobilesamv2-serve: {exc}", file=sys.stderr)
        return 1
    tls = {None: "", False: " (TLS)", True: " (mutual TLS)"}[
        None if security.tls is None else security.tls.client_ca is not None
    ]
    print(
        f"Triton ready (pid {server.pid}), model repository {repository}\n"
        f"  python:  {server.python_env.version} ({server.python_env.prefix})\n"
        f"  http:    {server.http_url}\n"
        f"  grpc:    {server.grpc_url}{tls}\n"
        f"  metrics: {server.metrics_url}\n"
        f"  log:     {server.log_path}\n"
        + "".join(f"  {note}\n" for note in security.notes())
        + "Ctrl-C or SIGTERM stops it.",
        flush=True,
    )
    supervisor = None
    if args.supervise:
        supervisor = Supervisor(
            server,
            interval=args.probe_interval,
            failure_interval=args.probe_retry_interval,
            probe_timeout=args.probe_timeout,
            failures=args.restart_after,
            max_restarts=args.max_restarts,
            drain_timeout=args.restart_drain,
            headers=security.restriction.http_headers() if security.restriction else None,
        )
        print(
            f"mobilesamv2-serve: probing every {args.probe_interval:g} s (deadline {args.probe_timeout:g} s);"
            f" restart after {args.restart_after} failures in a row",
            flush=True,
        )
    ending = serve(server, supervisor, poll=min(1.0, args.probe_retry_interval))
    if ending.reason != "stopped":
        print(
            f"mobilesamv2-serve: {ending.detail}; killed {len(server.reaped)} leftover processes of its "
            f"group; log {server.log_path}:\n{tail(server.log_path)}",
            file=sys.stderr,
        )
        return 1
    print("mobilesamv2-serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
