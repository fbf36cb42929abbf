"""Requests spread over the replicas of the service: the targets the clients accept, gRPC's client-side
balancing, and its equivalent for HTTP.

Targets (the clients' ``url``):

- ``host:port`` or ``dns:///host:port``: every address the name resolves to, e.g. a Kubernetes headless
  Service, which resolves to one address per ready pod;
- ``dns://<dns server>:<port>/host:port`` (gRPC): the same, asking that DNS server;
- ``ipv4:a:port,b:port`` (``ipv6:[a]:port,...``) or ``a:port,b:port``: a fixed list of addresses.

gRPC balances inside its channel: the ``round_robin`` policy keeps a connection to every address and sends
each request to the next one that is connected, so a replica that went away gets no new requests. gRPC
resolves a name only when one of its connections closes (not on a timer), at most every ``resolve_interval``
seconds: replicas added later are found when the servers close connections at their maximum age
(``tritonserver --grpc-max-connection-age``, which the Helm chart sets). HTTP does the same in the client
(:class:`HttpReplicas`): a connection pool per address, requests in turn, an address that refused a
connection skipped for a while, and the name resolved again every ``resolve_interval`` seconds.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable

from .errors import InvalidInputError, ServerUnavailableError

GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")
DEFAULT_RESOLVE_INTERVAL = 10.0
"""Seconds: how often, at most, a DNS name is resolved again (gRPC's own default is 30 s)."""
MAX_SKIP_S = 30.0
"""An HTTP address that keeps refusing connections is tried again at most this far apart (1, 2, 4 ... s)."""


def _split_host_port(entry: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; a clear error for anything else."""
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"not a host:port address: {entry!r} (the port is required in a list)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def join_address(host: str, port: int) -> str:
    """``host:port``, IPv6 literals in brackets."""
    return f"[{host}]:{port}" if _ip_version(host) == 6 else f"{host}:{port}"


def grpc_target(url: str) -> str:
    """The gRPC channel target of ``url``: gRPC's own forms as given; ``a:port,b:port`` of IP addresses
    becomes ``ipv4:``/``ipv6:`` (gRPC reads a bare comma list as one DNS name).

    >>> grpc_target("127.0.0.1:8001,127.0.0.2:8001")
    'ipv4:127.0.0.1:8001,127.0.0.2:8001'
    >>> grpc_target("dns:///segevery-headless.vision:8001")
    'dns:///segevery-headless.vision:8001'
    """
    if url.startswith(GRPC_SCHEMES) or "," not in url:
        return url
    entries = [_split_host_port(e) for e in url.split(",")]
    versions = {_ip_version(host) for host, _ in entries}
    if versions == {4}:
        return "ipv4:" + ",".join(join_address(h, p) for h, p in entries)
    if versions == {6}:
        return "ipv6:" + ",".join(join_address(h, p) for h, p in entries)
    raise InvalidInputError(
        f"a list of addresses must be all IPv4 or all IPv6 literals, got {url!r}; for names use one DNS "
        "name that resolves to every replica (dns:///name:port)"
    )


def grpc_channel_args(resolve_interval: float = DEFAULT_RESOLVE_INTERVAL) -> list[tuple[str, object]]:
    """tritonclient's own channel options plus ``round_robin`` balancing and the re-resolution interval.

    tritonclient uses ``channel_args`` instead of its defaults when given, so its defaults (message sizes,
    keepalive) are repeated here.
    """
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    service_config = {"loadBalancingConfig": [{"round_robin": {}}]}
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.dns_min_time_between_resolutions_ms", int(resolve_interval * 1000)),
    ]


def http_entries(url: str) -> tuple[list[tuple[str, int]], str]:
    """``([(host, port), ...], base path)`` of an HTTP target (see the module's docstring)."""
    if url.startswith("dns://") and not url.startswith("dns:///"):
        raise InvalidInputError(
            f"{url!r}: a DNS server in the target is for gRPC; HTTP resolves names with the system's "
            "resolver (dns:///name:port)"
        )
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
            break
    else:
        if url.startswith(GRPC_SCHEMES):
            raise InvalidInputError(f"{url!r} is a gRPC target that HTTP cannot use")
    address, slash, base = url.partition("/")
    entries = [_split_host_port(e) for e in address.split(",")]
    if len(entries) > 1 and slash:
        raise InvalidInputError(f"{url!r}: a base path is allowed with a single address only")
    return entries, slash + base


class HttpReplicas:
    """The addresses an HTTP client spreads its requests over: each name's addresses, in turn; an address
    that refused a connection is skipped for 1, 2, 4 ... (at most :data:`MAX_SKIP_S`) seconds; names are
    resolved again every ``resolve_interval`` seconds. Thread-safe; pure Python (no I/O but the resolver).

    ``resolve=False`` keeps names as they are (HTTPS through a TLS proxy: the certificate names the host).
    """

    def __init__(
        self,
        url: str,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
        *,
        resolve: bool = True,
        clock: Callable[[], float] = time.monotonic,
        resolver: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.entries, self.base = http_entries(url)
        self.resolve_interval = resolve_interval
        self._resolve = resolve
        self._clock = clock
        self._resolver = resolver or _resolve_name
        self._lock = threading.Lock()
        self._addresses: list[str] = []
        self._resolved_at = -float("inf")
        self._turn = itertools.count()
        self._skip: dict[str, tuple[float, float]] = {}  # address -> (skipped until, last skip length)

    def addresses(self) -> list[str]:
        """The current addresses (``host:port/base`` as tritonclient wants them), resolved when due."""
        with self._lock:
            now = self._clock()
            if now - self._resolved_at >= self.resolve_interval or not self._addresses:
                found = self._lookup()
                if found:
                    self._addresses = found
                    self._skip = {a: s for a, s in self._skip.items() if a in found}
                self._resolved_at = now
            return list(self._addresses)

    def _lookup(self) -> list[str]:
        found: list[str] = []
        errors = []
        for host, port in self.entries:
            if not self._resolve or _ip_version(host) is not None:
                hosts = [host]
            else:
                try:
                    hosts = self._resolver(host, port)
                except OSError as exc:
                    errors.append(f"{host}: {exc}")
                    continue
            found += [
                join_address(h, port) + self.base
                for h in hosts
                if join_address(h, port) + self.base not in found
            ]
        if not found and not self._addresses:
            raise ServerUnavailableError(
                f"cannot resolve {', '.join(errors) or 'the target'}", work_started=False
            )
        return found

    def pick(self) -> str:
        """The next address in turn that is not being skipped (when all are, the one skipped longest ago)."""
        addresses = self.addresses()
        with self._lock:
            now = self._clock()
            start = next(self._turn)
            for k in range(len(addresses)):
                address = addresses[(start + k) % len(addresses)]
                if self._skip.get(address, (0.0, 0.0))[0] <= now:
                    return address
            return min(addresses, key=lambda a: self._skip[a][0])

    def refused(self, address: str) -> None:
        """``address`` refused a connection (or broke one): skip it for twice as long as last time."""
        with self._lock:
            _, last = self._skip.get(address, (0.0, 0.5))
            length = min(MAX_SKIP_S, last * 2)
            self._skip[address] = (self._clock() + length, length)

    def answered(self, address: str) -> None:
        with self._lock:
            self._skip.pop(address, None)

    def others_available(self, address: str) -> bool:
        """Whether an address other than ``address`` is not being skipped now."""
        addresses = self.addresses()
        with self._lock:
            now = self._clock()
            return any(a != address and self._skip.get(a, (0.0, 0.0))[0] <= now for a in addresses)


def _resolve_name(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), in the resolver's order, without repeats."""
    seen: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen
