"""A pod source is a pod's only where it routes back (issue 21, findings 1 and 2).

Crafted packets from a pod-range source that is not the sender's, with raw-enough
sockets (IP_TRANSPARENT, a non-local bind):

* from a pod on the cluster's bridge `cni0`, a source that is not on this node
  (10.244.7.7: in POD_CIDRS 10.244.0.0/16, this node's pods are 10.244.0.0/24) - finding
  1: the table exempted it, and the replies, fwmarked, left by `eth0`;
* from a container on a bridge named `docker0` (in the default CLUSTER_INTERFACES) that
  is not the cluster's, another such source (10.244.8.8) and one of this node's pod
  addresses (the client pod's own) - finding 2.

Each sends three things whose answers are counted where they leave the machine:

* a DNS query to the kube-dns ClusterIP (DNAT-ed to the CoreDNS pod), answer from :53;
* a SYN to the machine's sshd on the bridge address, answer a SYN-ACK from :22;
* a datagram to the CoreDNS pod's responder on :5300 (a UDP echo of the query).

The matrix, in one lab (scenarios.Cells): Mullvad Connected and Blocked (our table
applied while connected), LAN sharing off and on, rp_filter 0 and 2, and three arms:

* "none", Mullvad alone: the requests are delivered only where its LAN sharing lets
  private sources in (never the DNS query: port 53), and the answers reach the LAN link
  only in Blocked with LAN sharing on (no tunnel; a 10/8 destination is "LAN" to it);
* "generated", our table: exactly what Mullvad alone does, and the client pod's own
  queries are answered (the lab can tell an exempted pod);
* "control", our table without the two guards issue 21 added for these findings (the
  pod rules' reverse-path test `fib saddr . iif oif exists`, and postrouting_guard's
  drop of exempted packets leaving by a non-cluster interface; either alone stops the
  answers of 1): every request is delivered and every answer to an off-node source
  leaves by the LAN link, in every cell. The probes see the leaks they guard against.

Not run: strict rp_filter (1), which drops these sources before any table decides
(nothing to tell apart); the rp_filter sysctl is IPv4's, so its IPv6 cells differ only
in name. IPv6 (fd00:10:244:7::7 from the pod) runs with LAN sharing off too: the pods
are settled (topology.Lab._settle_pods), knowing their IPv6 gateway as any pod does
after its first minute (its kernel's router probe from its link-local address). The
docker0 container is IPv4 only, as Docker's default network is.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .probes import tcp_connect
from .scenarios import (
    LEAVING_DROP,
    Cell,
    Cells,
    answered_locally,
    arm_tables,
    run_generator,
    weakened,
)
from .topology import (
    ANSWERS,
    DNS_ALT_PORT,
    DOCKER0,
    HOST_SERVICE_PORT,
    V4,
    V6,
    Fam,
    Lab,
    named_counters,
    read_counters,
)

NAMES = ("dns", "sshd", "echo")
# The docker0 container is the lab's (topology.DOCKER0).
SENDERS = {"pod": "client", "docker0": DOCKER0.role}
# In POD_CIDRS, on no interface of this node: one range per sender, so all run at once;
# one address per cell, so the machine's SYN-ACK retransmissions to earlier cells'
# sources (its sshd retries half-open connections for a minute) are never this cell's.
OFF_NODE = {("pod", 4): "10.244.7.", ("pod", 6): "fd00:10:244:7::", ("docker0", 4): "10.244.8."}
# The guards the control leaves out (issue 21, findings 1 and 2).
REVERSE_PATH = "fib saddr . iif oif exists"
QID = 7  # the probes' DNS id


@dataclass(frozen=True)
class Case:
    f: Fam
    sender: str  # "pod" or "docker0"
    whose: str  # "off_node" or "on_node" (the client pod's own address)
    n: int = 7  # the off-node address's last part

    @property
    def src(self) -> str:
        if self.whose == "on_node":
            return self.f.client_pod
        return OFF_NODE[self.sender, self.f.v] + (str(self.n) if self.f.v == 4 else f"{self.n:x}")

    @property
    def key(self) -> str:
        return f"v{self.f.v}_{self.sender}_{self.whose}"

    def probes(self) -> dict[str, tuple[str, int, str]]:
        """name -> (destination, port, protocol)"""
        f = self.f
        return {
            "dns": (f.kube_dns, 53, "udp"),
            "sshd": (f.cni_gw, HOST_SERVICE_PORT, "tcp"),
            "echo": (f.dns_pod, DNS_ALT_PORT, "udp"),
        }


CASES = [
    Case(V4, "pod", "off_node"),
    Case(V4, "docker0", "off_node"),
    Case(V4, "docker0", "on_node"),
    Case(V6, "pod", "off_node"),
]


def _answers(cases: list[Case]) -> dict[str, str]:
    """Answers to each case's source, by the port they come from: counter -> match."""
    return {
        f"{c.key}_{name}": f"{c.f.nfproto} daddr {c.src} {proto} sport {port}"
        for c in cases
        for name, (_dst, port, proto) in c.probes().items()
    }


def _requests(cases: list[Case], names: tuple[str, ...]) -> dict[str, str]:
    """The requests named, from each case's source, where they are received; queries by
    their DNS id (the client pod's own queries come from the on-node source too)."""
    qid = {"udp": f" @th,64,16 {QID}", "tcp": ""}
    return {
        f"{c.key}_{name}": f"{c.f.nfproto} saddr {c.src} {proto} dport {port}{qid[proto]}"
        for c in cases
        for name, (_dst, port, proto) in c.probes().items()
        if name in names
    }


def _counters(cases: list[Case]) -> dict[str, tuple[str, str]]:
    """namespace -> (table, its text): answers on the LAN link and in the tunnel (before
    anything else there), requests received in the CoreDNS pod and, after Mullvad's
    input chain, in the machine."""
    tables = {
        "lan": ("netlab_f1_lan", "prerouting priority -400", 'iifname "lanbr" ', _answers(cases)),
        "vpn": ("netlab_f1_tun", "prerouting priority -400", 'iifname "tun0" ', _answers(cases)),
        "coredns": ("netlab_f1_rx", "input priority 0", "", _requests(cases, ("dns", "echo"))),
        "host": ("netlab_f1_rx", "input priority 100", "", _requests(cases, ("sshd",))),
    }
    out = {}
    for role, (table, hook, iif, matches) in tables.items():
        head = f"type filter hook {hook}; policy accept;"
        out[role] = (table, named_counters(table, head, {n: iif + m for n, m in matches.items()}))
    return out


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    with Lab(MullvadState("connected", False, True), settled=True).built() as lab:
        ours = run_generator(lab, "generate", own=True).stdout
        control = weakened(ours, strip=[REVERSE_PATH], delete=[LEAVING_DROP])
        yield Cells(lab, arm_tables(lab, control=control))


def _send(cases: list[Case]) -> list[socket.socket]:
    """In the sender's namespace: each probe of each case (three datagrams, or a SYN)
    from the case's source; the sockets stay open until the counters are read."""
    query = agent.build_query(QID, "probe.cluster.local", agent.QTYPE_A)
    socks = []
    for case in cases:
        family = socket.AF_INET if case.f.v == 4 else socket.AF_INET6
        # IP_TRANSPARENT / IPV6_TRANSPARENT: bind a non-local source
        level, opt = (socket.SOL_IP, 19) if case.f.v == 4 else (socket.IPPROTO_IPV6, 75)
        for dst, port, proto in case.probes().values():
            sock = socket.socket(
                family, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
            )
            socks.append(sock)
            sock.setsockopt(level, opt, 1)
            sock.bind((case.src, 0))
            sock.setblocking(False)
            if proto == "udp":
                for _ in range(3):
                    sock.sendto(query, (dst, port))
            else:
                with contextlib.suppress(BlockingIOError):
                    sock.connect((dst, port))  # the SYN
    return socks


def _own_answer(f: Fam) -> str:
    """The client pod's query from its own address to the kube-dns ClusterIP."""
    qtype = agent.QTYPE_A if f.v == 4 else agent.QTYPE_AAAA
    answer = ""
    for qid in (9, 10, 11):  # the first may wait for neighbour discovery (IPv6)
        try:
            msg = agent.build_query(qid, "own.cluster.local", qtype)
            return agent.parse_answer(agent.query_udp(f.kube_dns, 53, msg, 1.0), qid)
        except (OSError, ValueError) as exc:
            answer = f"no answer: {exc!r}"
    return answer


def run(cells: Cells, cell: Cell) -> dict[str, dict[str, dict[str, int]]]:
    """Per case: packets delivered, answers on the LAN link and in the tunnel, by probe."""
    lab = cells.lab
    cells.enter(cell)
    cases = [replace(c, n=cells.entered) for c in CASES]
    counters = _counters(cases)
    for role, (_table, text) in counters.items():
        lab[role].nft(text)
    if cell.lan:  # the host solicits the pods: their IPv6 answers need the neighbours
        for pod in (V6.client_pod, V6.dns_pod):
            lab["host"].call(partial(tcp_connect, pod, 9))
    senders = {s: [c for c in cases if c.sender == s] for s in SENDERS}
    with ThreadPoolExecutor(len(senders)) as pool:
        futures = [
            pool.submit(lab[SENDERS[s]].call, partial(_send, cs)) for s, cs in senders.items()
        ]
        socks = [sock for fut in futures for sock in fut.result()]
    try:
        lab.barrier()  # the requests delivered or dropped, the machine's SYN-ACKs out
        for f in {c.f for c in cases}:
            for port in (53, DNS_ALT_PORT):
                answered_locally(lab, "coredns", f.dns_pod, port)
        lab.barrier()  # and CoreDNS's answers on their way out
        counts = {role: read_counters(lab[role], table) for role, (table, _) in counters.items()}
    finally:
        for sock in socks:
            sock.close()
    delivered = {**counts["coredns"], **counts["host"]}
    return {
        c.key: {
            "delivered": {n: delivered[f"{c.key}_{n}"] for n in NAMES},
            "lan": {n: counts["lan"][f"{c.key}_{n}"] for n in NAMES},
            "tunnel": {n: counts["vpn"][f"{c.key}_{n}"] for n in NAMES},
        }
        for c in cases
    }


def expected(case: Case, cell: Cell) -> dict[str, dict[str, bool]]:
    """Per arm: delivered? answered on the LAN link? by probe."""
    if cell.arm == "control":  # exempted: all in, and answers fwmarked to the LAN
        delivered = dict.fromkeys(NAMES, True)
        return {"delivered": delivered, "lan": dict.fromkeys(NAMES, case.whose == "off_node")}
    # Mullvad alone, and so our table
    delivered = {"dns": False, "sshd": cell.lan, "echo": cell.lan}
    blocked_lan = case.whose == "off_node" and cell.state == "blocked"
    return {"delivered": delivered, "lan": {n: d and blocked_lan for n, d in delivered.items()}}


def _cells() -> list[Cell]:
    """Connected first: going Blocked and back costs a reconnect."""
    return [
        Cell(state, lan, arm, rp_filter)
        for state in ("connected", "blocked")
        for lan in (False, True)
        for rp_filter in (0, 2)
        for arm in ("none", "generated", "control")
    ]


@pytest.mark.parametrize("cell", _cells(), ids=lambda c: c.id)
def test_a_pod_source_that_does_not_route_back_is_not_a_pod(cells: Cells, cell: Cell) -> None:
    got = run(cells, cell)
    seen = {
        key: {
            what: {n: count > 0 for n, count in by.items()}
            for what, by in r.items()
            if what != "tunnel"
        }
        for key, r in got.items()
    }
    want = {c.key: expected(c, cell) for c in CASES if c.key in got}
    assert seen == want, got
    if cell.arm != "none":  # CoreDNS answers the real pod
        for f in (V4, V6) if cell.lan else (V4,):
            answer = cells.lab["client"].call(partial(_own_answer, f))
            assert answer == ANSWERS["coredns"]["A" if f.v == 4 else "AAAA"], answer
