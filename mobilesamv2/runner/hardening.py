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

import argparse
import os
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
    """Every value of ``--option=value`` / ``--option value`` in ``args``: the one parser of tritonserver
    command lines in the project."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == option and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def option_value(args: Sequence[str], option: str) -> str | None:
    """The value tritonserver takes for ``option`` (the last one given), None when absent."""
    values = option_values(args, option)
    return values[-1] if values else None


def has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


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
                "restricted APIs and gRPC TLS itself; use the entrypoint's / mobilesamv2-serve's own options"
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


FALSE_WORDS = ("0", "false", "no", "off")


def add_security_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], *, restrict_by_default: bool
) -> None:
    """The locked-down server's options, the same for ``mobilesamv2-serve`` and the container entrypoint
    (each with its environment variable): only the default of ``--restrict-management-apis`` differs."""
    group = parser.add_argument_group(
        "locked-down serving",
        "tritonserver always runs with --model-control-mode=none. With --restrict-management-apis the "
        f"management APIs ({', '.join(MANAGEMENT_APIS)}) answer only requests that carry the admin key: HTTP "
        f"header <admin-header>, gRPC metadata {GRPC_HEADER_PREFIX}<admin-header>. Inference, health and "
        "metadata stay open.",
    )
    restrict = environ.get("RESTRICT_MANAGEMENT_APIS")
    group.add_argument(
        "--restrict-management-apis",
        "--restrict-apis",
        dest="restrict",
        action=argparse.BooleanOptionalAction,
        default=restrict_by_default if restrict is None else restrict.strip().lower() not in FALSE_WORDS,
        help=f"{'on' if restrict_by_default else 'off'} by default ($RESTRICT_MANAGEMENT_APIS); the key "
        "comes "
        f"from --admin-key-file, else ${ADMIN_KEY_VAR}, else a random one",
    )
    group.add_argument(
        "--admin-key-file",
        type=Path,
        default=environ.get("ADMIN_KEY_FILE") or None,
        help="file holding the admin key, e.g. a mounted Secret ($ADMIN_KEY_FILE)",
    )
    group.add_argument(
        "--admin-header",
        default=environ.get("ADMIN_HEADER") or DEFAULT_ADMIN_HEADER,
        help="the key's header name ($ADMIN_HEADER)",
    )
    group.add_argument(
        "--grpc-tls-cert",
        type=Path,
        default=environ.get("GRPC_TLS_CERT") or None,
        help="PEM server certificate: gRPC TLS ($GRPC_TLS_CERT)",
    )
    group.add_argument(
        "--grpc-tls-key", type=Path, default=environ.get("GRPC_TLS_KEY") or None, help="PEM server key"
    )
    group.add_argument(
        "--grpc-tls-client-ca",
        type=Path,
        default=environ.get("GRPC_TLS_CLIENT_CA") or None,
        help="PEM CA of the client certificates: mutual TLS ($GRPC_TLS_CLIENT_CA)",
    )


ADMIN_KEY_VAR = "ADMIN_KEY"


@dataclass(frozen=True)
class Security:
    """What the security options decided: the restriction (None: APIs open), gRPC TLS, where the key is."""

    restriction: Restriction | None
    tls: GrpcTls | None
    key_origin: str
    """``file <path>``, ``$ADMIN_KEY``, ``random, written to <path>`` or ``random, not kept``."""

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str], generated_key_file: Path | None = None
    ) -> Security:
        """From :func:`add_security_arguments`'s options. Without a key file or ``$ADMIN_KEY`` the key is
        random; with ``generated_key_file`` it is written there (mode 600) for the local user, else nobody
        knows it and the management APIs are off."""
        restriction, origin = None, ""
        if args.restrict:
            header = args.admin_header or DEFAULT_ADMIN_HEADER
            if args.admin_key_file:
                restriction, origin = (
                    Restriction(read_key(args.admin_key_file), header),
                    f"file {args.admin_key_file}",
                )
            elif environ.get(ADMIN_KEY_VAR):
                restriction, origin = Restriction(environ[ADMIN_KEY_VAR].strip(), header), f"${ADMIN_KEY_VAR}"
            else:
                restriction, origin = Restriction(generate_key(), header), "random, not kept"
                if generated_key_file is not None:
                    write_key(generated_key_file, restriction.key)
                    origin = f"random, written to {generated_key_file}"
        tls = None
        if args.grpc_tls_cert or args.grpc_tls_key or args.grpc_tls_client_ca:
            if not (args.grpc_tls_cert and args.grpc_tls_key):
                raise HardeningError("gRPC TLS needs both --grpc-tls-cert and --grpc-tls-key")
            tls = GrpcTls(Path(args.grpc_tls_cert), Path(args.grpc_tls_key), args.grpc_tls_client_ca).check()
        return cls(restriction, tls, origin)

    @property
    def secrets(self) -> list[str]:
        return [self.restriction.key] if self.restriction is not None else []

    def args(self, other_args: Sequence[str]) -> list[str]:
        """The tritonserver options (see :func:`hardened_args`)."""
        return hardened_args(other_args, self.restriction, self.tls)

    def notes(self) -> list[str]:
        """What a log should say about it (never the key)."""
        apis = ", ".join(MANAGEMENT_APIS)
        if self.restriction is None:
            notes = [f"warning: management APIs open to every client ({apis})"]
        elif self.key_origin == "random, not kept":
            notes = [
                f"management APIs ({apis}) locked with a random key: give the key in ADMIN_KEY_FILE (or "
                "ADMIN_KEY) to use them"
            ]
        else:
            grpc_header = next(iter(self.restriction.grpc_headers()))
            notes = [
                f"management APIs ({apis}) need the admin key ({self.key_origin}): HTTP header "
                f"'{self.restriction.header}', gRPC metadata '{grpc_header}'"
            ]
        if self.tls is not None:
            mutual = (
                "mutual TLS (client certificates signed by the client CA)" if self.tls.client_ca else "TLS"
            )
            notes.append(f"gRPC: {mutual}; HTTP stays plain (terminate TLS in front of it)")
        notes.append("model control mode none: the repository is loaded at start and never changes")
        return notes


def write_key(path: Path, key: str) -> None:
    """``key`` into a new file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
