"""The pieces of ``loadtest.replicas`` that need no server: the loopback DNS server, per-replica counts."""

from __future__ import annotations

import socket
import struct

from loadtest.replicas import LoopbackDns, ReplicaCounts, metrics_addresses, read_counts
from mobilesamv2.runner.local import free_port


def query(port: int, name: str, qtype: int) -> tuple[int, list[str]]:
    """One DNS query over UDP: (rcode, the A records' addresses)."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", port))
        answer = sock.recv(512)
    qid, flags, _, count = struct.unpack(">HHHH", answer[:8])
    assert qid == 0x1234 and flags & 0x8000  # our query's response
    records = answer[12 + len(question) + 4 :]
    addresses = [socket.inet_ntoa(records[i * 16 + 12 : i * 16 + 16]) for i in range(count)]
    return flags & 0xF, addresses


def test_loopback_dns_answers_for_its_name_only():
    dns = LoopbackDns("Replicas.Test", ["127.0.0.1", "127.0.0.2"])
    try:
        assert query(dns.port, "replicas.test", 1) == (0, ["127.0.0.1", "127.0.0.2"])
        dns.addresses = ["127.0.0.3"]
        assert query(dns.port, "REPLICAS.test", 1) == (0, ["127.0.0.3"])
        assert query(dns.port, "replicas.test", 28) == (0, [])  # no IPv6 addresses
        assert query(dns.port, "other.test", 1) == (3, [])  # NXDOMAIN
        assert dns.queries == 2
    finally:
        dns.close()


def test_replica_counts_since_a_start():
    assert ReplicaCounts(10, 2) - ReplicaCounts(4, 1) == ReplicaCounts(6, 1)
    assert ReplicaCounts(3, 0) - None == ReplicaCounts(3, 0)  # a replica that started since
    assert (ReplicaCounts(3, 0) - None).as_dict() == {"ok": 3, "failed": 0}


def test_a_silent_metrics_port_reads_as_none():
    address = f"127.0.0.1:{free_port()}"
    assert read_counts([address, address]) == {address: None}


def test_metrics_addresses_of_a_target():
    assert metrics_addresses("ipv4:127.0.0.1:8001,127.0.0.2:8001", 8002) == [
        "127.0.0.1:8002",
        "127.0.0.2:8002",
    ]
    assert metrics_addresses("10.0.0.7:8001", 9102) == ["10.0.0.7:9102"]
