"""tritonserver options of a locked-down deployment: management APIs behind a key, gRPC TLS, no model control.

Triton 2.51 (checked with ``tritonserver --help`` and on the server here):

- ``--http-restricted-api=<apis>:<header>=<key>`` and ``--grpc-restricted-protocol=<apis>:<header>=<key>``
  (the help text says ``<apis>,<key>=<value>``; the parser splits at the colon). A restricted HTTP API without
  the header answers 403 ``This API is restricted, expecting header '<header>'``; over gRPC the metadata key
  is ``triton-grpc-protocol-<header>`` and the answer is ``UNAVAILABLE``.
- The management APIs restricted here: shared-memory, model-repository, model-config, logging, trace and
  statistics. Inference, health and metadata stay open (clients, probes, load balancers).
- ``--model-control-mode=none``: the repository is loaded at start and never changes; load/unload requests
  are refused even with the key.
- gRPC TLS: ``--grpc-use-ssl=true --grpc-server-cert --grpc-server-key``; mutual TLS adds
  ``--grpc-use-ssl-mutual=true --grpc-root-cert`` (the CA that signs client certificates). HTTP has no TLS
  of its own: terminate TLS in front of it.

The key is passed on tritonserver's command line (Triton takes it nowhere else), so any process of the same
user in the container can read it from ``/proc``; it keeps the management APIs away from network clients, not
from code running inside the container. Standard library only: the container's entrypoint (Python 3.10)
imports this.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MANAGEMENT_APIS = ("shared-memory", "model-repository", "model-config", "logging", "trace", "statistics")
"""What a key guards; inference, health and metadata stay open."""
DEFAULT_ADMIN_HEADER = "mobilesamv2-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
"""Triton's gRPC server expects the restricted-protocol header under this prefix."""
_HEADER = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY = re.compile(r"^[A-Za-z0-9._~+/-]{16,}$")  # no ':' '=' ',' or whitespace: Triton's option parser splits


class HardeningError(ValueError):
    """A setting that cannot be served as asked; the message says what to change."""


def generate_key() -> str:
    """A random key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def read_key(path: str | Path) -> str:
    """The key in a file (a mounted Secret): its content without surrounding whitespace."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise HardeningError(f"cannot read the admin key file {path}: {exc.strerror or exc}") from exc
    if not key:
        raise HardeningError(f"the admin key file {path} is empty")
    return key


@dataclass(frozen=True)
class Restriction:
    """Management APIs behind ``header: key`` (HTTP) / ``triton-grpc-protocol-<header>: key`` (gRPC)."""

    key: str
    header: str = DEFAULT_ADMIN_HEADER
    apis: tuple[str, ...] = MANAGEMENT_APIS

    def __post_init__(self) -> None:
        if not _HEADER.match(self.header):
            raise HardeningError(f"admin header {self.header!r}: lower-case letters, digits and '-' only")
        if not _KEY.match(self.key):
            raise HardeningError(
                "the admin key must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / - (Triton's option "
                "parser splits at ':', '=' and ','), e.g. python3 -c "
                "'import secrets; print(secrets.token_urlsafe(32))'"
            )
        unknown = set(self.apis) - set(MANAGEMENT_APIS) - {"health", "metadata", "inference"}
        if unknown or not self.apis:
            raise HardeningError(f"unknown or no APIs to restrict: {sorted(unknown)}")

    def args(self) -> list[str]:
        apis = ",".join(self.apis)
        return [
            f"--http-restricted-api={apis}:{self.header}={self.key}",
            f"--grpc-restricted-protocol={apis}:{self.header}={self.key}",
        ]

    def http_headers(self) -> dict[str, str]:
        return {self.header: self.key}

    def grpc_headers(self) -> dict[str, str]:
        return {GRPC_HEADER_PREFIX + self.header: self.key}


@dataclass(frozen=True)
class GrpcTls:
    """gRPC over TLS with this server certificate and key; with ``client_ca`` also mutual TLS (clients must
    present a certificate that CA signed)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> GrpcTls:
        """The files exist and hold PEM of the right kind; returns self."""
        for what, path, marker in (
            ("certificate", self.cert, "CERTIFICATE-----"),
            ("key", self.key, "PRIVATE KEY-----"),
            ("client CA", self.client_ca, "CERTIFICATE-----"),
        ):
            if path is None:
                continue
            try:
                text = Path(path).read_text(errors="replace")
            except OSError as exc:
                raise HardeningError(f"gRPC TLS {what} {path}: {exc.strerror or exc}") from exc
            if marker not in text:
                raise HardeningError(f"gRPC TLS {what} {path} is not PEM ({marker.strip('-')} expected)")
        return self

    def args(self) -> list[str]:
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return args


def option_values(args: Sequence[str], option: str) -> list[str]:
    """Every value of ``--option=value`` / ``--option value`` in ``args``."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == option and i + 1 < len(args):
            values.append(args[i + 1])
    return values


#: Options a locked-down server must not get from elsewhere: they would change the model control mode or the
#: restrictions set here.
_CONFLICTING = (
    "--model-control-mode",
    "--load-model",
    "--repository-poll-secs",
    "--http-restricted-api",
    "--grpc-restricted-protocol",
    "--grpc-use-ssl",
    "--grpc-use-ssl-mutual",
    "--grpc-server-cert",
    "--grpc-server-key",
    "--grpc-root-cert",
)


def hardened_args(
    other_args: Sequence[str],
    restriction: Restriction | None,
    grpc_tls: GrpcTls | None,
    managed: Sequence[str] = _CONFLICTING,
) -> list[str]:
    """``--model-control-mode=none`` plus the options of ``restriction`` and ``grpc_tls``; refuses
    ``other_args`` (the caller's extra tritonserver options) that would set any of them differently."""
    for option in managed:
        for value in option_values(other_args, option):
            if option == "--model-control-mode" and value == "none":
                continue
            raise HardeningError(
                f"{option}={value}: the locked-down server sets the model control mode (none), the "
                "restricted APIs and gRPC TLS itself; use the entrypoint's / launcher's own options"
            )
    args = ["--model-control-mode=none"]
    if restriction is not None:
        args += restriction.args()
    if grpc_tls is not None:
        args += grpc_tls.check().args()
    return args


def redact(command: Sequence[str], secrets_: Sequence[str]) -> list[str]:
    """``command`` with every secret replaced by ``***`` (for logs and --dry-run)."""
    out = []
    for arg in command:
        clean = arg
        for secret in secrets_:
            if secret:
                clean = clean.replace(secret, "***")
        out.append(clean)
    return out


def restriction_from(
    environ: Mapping[str, str], key_file: str | None, header: str | None, key_env: str = "ADMIN_KEY"
) -> tuple[Restriction, bool]:
    """The restriction from a key file, else ``environ[key_env]``, else a random key; returns it and whether
    the key was generated (nobody can then use the management APIs: they are off)."""
    header = header or DEFAULT_ADMIN_HEADER
    if key_file:
        return Restriction(read_key(key_file), header), False
    if environ.get(key_env):
        return Restriction(environ[key_env].strip(), header), False
    return Restriction(generate_key(), header), True
