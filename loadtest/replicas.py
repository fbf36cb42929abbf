"""Several replicas of the service on one machine, behind one DNS name: a Kubernetes headless Service in
miniature, for load tests of client-side balancing, replica loss, rollouts and scale-up.

:class:`LocalReplicas` runs tritonservers of one model repository on the loopback addresses 127.0.0.1, .2, .3
... (Linux routes all of 127/8 to the machine), all on the same ports, so that one name with several addresses
reaches them all. :class:`LoopbackDns` is that name's DNS server: a small UDP responder on 127.0.0.1 that
answers A queries for one name with the addresses of the replicas that are ready, as a cluster's DNS does for
a headless Service. gRPC asks it directly (its c-ares resolver takes a DNS server in the target,
``dns://127.0.0.1:<port>/<name>:<grpc port>``), so a client finds replicas added later through gRPC's own
re-resolution, the path it takes in a cluster.

:func:`read_counts` reads how many requests each replica served from its own metrics port, for any replicas
(``loadtest.run`` reports requests per replica with it).

>>> with LocalReplicas("work/test-cache/model_repository", log_dir="work/logs") as replicas:  # doctest: +SKIP
...     replicas.start(3)
...     client = SegmentEverythingClient(replicas.grpc_target)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mobilesamv2.runner.local import TritonServer, free_port
from mobilesamv2.runner.server import metric_total, scrape
from segment_everything_client.replicas import HttpReplicas

DEFAULT_NAME = "segment-everything.replicas.test"
TTL_S = 1
_A, _AAAA, _IN = 1, 28, 1
_NXDOMAIN = 3


class LoopbackDns:
    """A DNS server on ``127.0.0.1`` (UDP, a free port) that knows one ``name``: A queries get
    :attr:`addresses`, AAAA queries an empty answer, other names NXDOMAIN. Runs in a daemon thread until
    :meth:`close`."""

    def __init__(self, name: str = DEFAULT_NAME, addresses: Sequence[str] = ()) -> None:
        self.name = name.lower().rstrip(".")
        self._addresses = list(addresses)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)  # a closed socket does not wake a thread blocked on it: look now and then
        self._closed = threading.Event()
        self.port: int = self._sock.getsockname()[1]
        self.queries = 0
        """A queries answered so far (each is one resolution by a client)."""
        self._thread = threading.Thread(target=self._serve, name="loopback-dns", daemon=True)
        self._thread.start()

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._addresses)

    @addresses.setter
    def addresses(self, addresses: Sequence[str]) -> None:
        with self._lock:
            self._addresses = list(addresses)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            with contextlib.suppress(ValueError, IndexError, struct.error):
                self._sock.sendto(self.answer(query), peer)

    def answer(self, query: bytes) -> bytes:
        """The response to one query packet (RFC 1035: header, the question echoed, A records)."""
        qid, flags = struct.unpack(">HH", query[:4])
        labels, i = [], 12
        while query[i]:
            length = query[i]
            labels.append(query[i + 1 : i + 1 + length].decode("ascii", "replace"))
            i += length + 1
        qtype, _ = struct.unpack(">HH", query[i + 1 : i + 5])
        question = query[12 : i + 5]
        records: list[bytes] = []
        rcode = 0
        if ".".join(labels).lower() != self.name:
            rcode = _NXDOMAIN
        elif qtype == _A:
            self.queries += 1
            # name = pointer to the question's name (offset 12), type A, class IN, TTL, 4 bytes of address
            record = struct.pack(">HHHIH", 0xC00C, _A, _IN, TTL_S, 4)
            records = [record + socket.inet_aton(address) for address in self.addresses]
        # QR + AA + RA, the client's RD echoed
        header = struct.pack(">HHHHHH", qid, 0x8480 | (flags & 0x0100) | rcode, 1, len(records), 0, 0)
        return header + question + b"".join(records)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()


class LocalReplicas:
    """tritonservers of ``model_repository`` on 127.0.0.1, 127.0.0.2, ... with the same three ports, and a
    :class:`LoopbackDns` that lists those ready to serve (a context manager; :meth:`close` stops all).

    ``max_connection_age_s``: the servers close each gRPC connection after this long
    (``--grpc-max-connection-age``, as the Helm chart sets it), which is when gRPC clients resolve the name
    again and find replicas added since. ``env``, ``exit_timeout_s`` and ``startup_timeout`` go to every
    :class:`~mobilesamv2.runner.local.TritonServer`; server logs go to ``log_dir``.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        log_dir: str | os.PathLike[str],
        name: str = DEFAULT_NAME,
        max_connection_age_s: float | None = 30.0,
        env: Mapping[str, str] | None = None,
        exit_timeout_s: int = 10,
        startup_timeout: float = 180.0,
    ) -> None:
        self.model_repository = Path(model_repository)
        self.log_dir = Path(log_dir)
        self.env = dict(env or {})
        self.exit_timeout_s = exit_timeout_s
        self.startup_timeout = startup_timeout
        self.extra_args = (
            []
            if max_connection_age_s is None
            else [f"--grpc-max-connection-age={int(max_connection_age_s * 1000)}"]
        )
        self.http_port, self.grpc_port, self.metrics_port = _distinct_free_ports(3)
        self.dns = LoopbackDns(name)
        self.servers: dict[str, TritonServer] = {}
        """Every server started, by loopback address (stopped ones included)."""
        self._stopping: dict[str, threading.Thread] = {}
        self._next_host = 1

    # -- targets ---------------------------------------------------------------------------------------------
    @property
    def grpc_target(self) -> str:
        """The DNS name through :attr:`dns` (gRPC only: HTTP clients resolve with the system's resolver)."""
        return f"dns://127.0.0.1:{self.dns.port}/{self.dns.name}:{self.grpc_port}"

    def address_list(self, protocol: str = "grpc", hosts: Sequence[str] | None = None) -> str:
        """``ipv4:a:port,b:port`` of ``hosts`` (default: the running servers), for either protocol."""
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return "ipv4:" + ",".join(f"{h}:{port}" for h in (hosts or self.running()))

    def metrics_address(self, host: str) -> str:
        return f"{host}:{self.metrics_port}"

    def running(self) -> list[str]:
        return [host for host, server in self.servers.items() if server.is_running()]

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, count: int = 1) -> list[str]:
        """Start ``count`` more servers at once, wait until all are ready, then list them in the DNS."""
        hosts = []
        try:
            for _ in range(count):
                host = f"127.0.0.{self._next_host}"
                self._next_host += 1
                server = TritonServer(
                    self.model_repository,
                    host=host,
                    http_port=self.http_port,
                    grpc_port=self.grpc_port,
                    metrics_port=self.metrics_port,
                    extra_args=self.extra_args,
                    env=self.env,
                    exit_timeout_s=self.exit_timeout_s,
                    startup_timeout=self.startup_timeout,
                    log_path=self.log_dir / f"tritonserver-{host}.log",
                )
                self.servers[host] = server
                server.start(wait=False)  # all load at once; readiness is awaited below
                hosts.append(host)
            for host in hosts:
                self.servers[host].wait_until_ready()
        except BaseException:
            for host in hosts:
                self.servers[host].stop()
            raise
        self.dns.addresses = [*self.dns.addresses, *hosts]
        return hosts

    def kill(self, host: str) -> None:
        """SIGKILL the whole server at ``host`` (a lost machine): it stays in the DNS, as a dead pod's
        address does until the cluster notices; its Python stubs are reaped."""
        server = self.servers[host]
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
        server.stop()

    def terminate(self, host: str) -> None:
        """A rollout or scale-down of ``host``: out of the DNS, then what the runner does on SIGTERM
        (:meth:`~mobilesamv2.runner.server.TritonProcess.shutdown`: new requests refused at once, those in
        flight finish, then tritonserver stops), in a thread; :meth:`wait_exit` waits for it."""
        self.dns.addresses = [a for a in self.dns.addresses if a != host]
        server = self.servers[host]
        server.begin_drain()  # now, so that the caller sees the drain from its first moment
        thread = threading.Thread(target=server.shutdown, name=f"shutdown-{host}", daemon=True)
        self._stopping[host] = thread
        thread.start()

    def wait_exit(self, host: str) -> int | None:
        """Wait until the server at ``host`` has exited; its exit status (0: a clean stop)."""
        thread = self._stopping.pop(host, None)
        if thread is not None:
            thread.join()
        return self.servers[host].stop()

    def close(self) -> None:
        for server in self.servers.values():  # all at once: each one takes seconds to stop
            server.send_signal(signal.SIGTERM)
        for host in list(self.servers):
            self.wait_exit(host)
        self.dns.close()

    def __enter__(self) -> LocalReplicas:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class ReplicaCounts:
    """A replica's own counts of the pipeline's requests since it started: answered ``ok`` (segmented), and
    ``failed`` (answered with an error, or refused by Triton, e.g. its queue full). From the pipeline's
    ``segevery_requests_total`` by outcome and Triton's ``nv_inference_request_failure``; Triton's
    ``nv_inference_request_success`` would count error answers too. Requests a draining replica turned away
    are in neither: they were served elsewhere."""

    ok: int
    failed: int

    def __sub__(self, earlier: ReplicaCounts | None) -> ReplicaCounts:
        if earlier is None:  # not seen earlier: started since
            return self
        return ReplicaCounts(self.ok - earlier.ok, self.failed - earlier.failed)

    def as_dict(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed}


def answered_ok(text: str, model: str = "segment_everything") -> float:
    """Requests the pipeline segmented, from a metrics page."""
    return metric_total(text, "segevery_requests_total", model=model, outcome="ok")


def replica_counts(metrics_address: str, model: str = "segment_everything") -> ReplicaCounts | None:
    """The counts of ``model`` on the Triton whose metrics port is ``metrics_address`` (``host:port``); None
    when it does not answer."""
    text = scrape(f"http://{metrics_address}/metrics")
    if text is None:
        return None
    ok = answered_ok(text, model)
    errors = metric_total(text, "segevery_requests_total", model=model) - ok
    refused = metric_total(text, "nv_inference_request_failure", model=model)
    return ReplicaCounts(int(ok), int(errors + refused))


def read_counts(
    addresses: Iterable[str], model: str = "segment_everything"
) -> dict[str, ReplicaCounts | None]:
    """:func:`replica_counts` of each metrics address (repeats read once)."""
    return {address: replica_counts(address, model) for address in dict.fromkeys(addresses)}


def metrics_addresses(target: str, metrics_port: int) -> list[str]:
    """The metrics addresses (``host:metrics_port``) of the replicas a client target names, resolved with the
    system's resolver (a ``dns://<server>/`` target names its DNS server: give the addresses instead)."""
    hosts = [address.rsplit(":", 1)[0] for address in HttpReplicas(target).addresses()]
    return [f"{host}:{metrics_port}" for host in hosts]


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
