"""A LAN host cannot inject packets into a pod's exempted flow (issue 21, finding 3).

The pod's DNS query (exempted by our table: its flow carries the ct mark). Then the LAN
router, which routes the cluster ranges to the node as a LAN host could, sends three
packets that conntrack files under that flow, from the LAN side:

* a spoofed query: the pod's own address and port to the query's destination (original
  direction), counted at the server by its payload;
* a forged answer: the server's address and port to the pod's port (reply direction),
  which the pod's connected socket takes as its answer;
* an ICMP port-unreachable from the router's own address (no spoofing at all, so
  strict rp_filter passes it), quoting the query, which the pod's socket reports as
  ECONNREFUSED: its DNS breaks.

Two flows: to the kube-dns ClusterIP (DNAT-ed to the CoreDNS pod on the same bridge:
only with br_netfilter, which un-DNATs the bridged replies) and to a resolver on this
machine's bridge address (delivered here; with br_netfilter and without it: the attack
is routed, so it meets the inet hooks either way).

The matrix, in one lab (scenarios.Cells): Mullvad Connected and Blocked (our table
applied while connected), LAN sharing off and on, rp_filter 0, 2 and 1, br_netfilter
on and off, three arms, each attack asserting what the pod's socket got and how many
spoofed queries reached the server:

* "none", Mullvad alone: the pod's query to the ClusterIP is rejected (port 53), so
  there is no flow, and nothing injected reaches it or CoreDNS; its query to the
  machine is answered only with LAN sharing on (any private source is let in), and
  then Mullvad lets the LAN in too: the spoofed query is delivered and the ICMP error
  breaks the pod's socket (IPv6: the forged answer, whose source is the machine's own
  address, reaches it as well; IPv4 drops a packet from a local source as a martian);
* "generated", our table: the pod's queries are answered, nothing injected arrives;
* "control", our table without the drop of an exempted flow's packets that arrive on a
  non-cluster interface (input_guard's and forward_guard's, the rule issue 21 added for
  this finding): the spoofed query arrives, the forged answer and the ICMP error reach
  the pod's socket, in every cell. The probes see the injection they guard against.

Strict rp_filter (1) runs too: it drops the spoofed query and the forged answer (the
pod's and CoreDNS's addresses route back by `cni0`, not the LAN), but not the ICMP
error, which comes from the router's own address: the control's and Mullvad's cells
still show it reaching the pod's socket, our table's do not. The rp_filter sysctl is
IPv4's: its IPv6 cells differ only in name.

The pods are settled (topology.Lab._settle_pods): they know their IPv6 gateway, as any
pod does after its first minute (its kernel's router probe from its link-local
address), so IPv6 runs with LAN sharing off too, where only the guard stops the
injection (with LAN sharing on Mullvad lets the LAN in anyway).

Not run: the ClusterIP flow without
br_netfilter (CoreDNS's bridged answers are not un-DNAT-ed: the lab's DNS does not
work, with any table).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .probes import tcp_connect
from .scenarios import (
    ARRIVING_DROP,
    Cell,
    Cells,
    answered_locally,
    arm_tables,
    run_generator,
    weakened,
)
from .topology import (
    ANSWERS,
    FAMILIES,
    SPOOF_PAYLOAD,
    SPOOF_PORT,
    SPOOF_RECEIVERS,
    V6,
    Fam,
    Lab,
    read_counters,
    watch_name,
)

FORGED = b"forged answer"
QID = 7


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


@dataclass(frozen=True)
class Attack:
    """One flow of the pod's, in one family, and the packets injected into it."""

    f: Fam
    flow: str  # "clusterip" or "node"

    @property
    def dst(self) -> tuple[str, int]:
        """Where the pod sends its query."""
        return (self.f.kube_dns, 53) if self.flow == "clusterip" else (self.f.cni_gw, SPOOF_PORT)

    @property
    def server(self) -> tuple[str, int]:
        """Where the query goes after DNAT."""
        return (self.f.dns_pod, 53) if self.flow == "clusterip" else self.dst

    @property
    def receiver(self) -> str:
        """The namespace that counts spoofed queries (topology.SPOOF_RECEIVERS)."""
        return "coredns" if self.flow == "clusterip" else "host"

    @property
    def key(self) -> str:
        return f"v{self.f.v}_{self.flow}"

    def quoted_query(self, sport: int) -> bytes:
        """The pod's query as it left towards the server (after DNAT): IP header and
        the first 8 bytes of UDP, as an ICMP error quotes it."""
        f, server = self.f, self.server
        udp = struct.pack("!HHHH", sport, server[1], 8 + 30, 0)
        fam = socket.AF_INET if f.v == 4 else socket.AF_INET6
        src, dst = socket.inet_pton(fam, f.client_pod), socket.inet_pton(fam, server[0])
        if f.v == 6:
            return struct.pack("!IHBB", 6 << 28, 8 + 30, 17, 64) + src + dst + udp
        head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + 8 + 30, 1, 0, 64, 17, 0) + src + dst
        return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + udp

    def inject(self, sport: int) -> None:
        """In the LAN router's namespace: the three packets (see the module docstring)."""
        f = self.f
        family = socket.AF_INET if f.v == 4 else socket.AF_INET6
        level, opt = (socket.SOL_IP, 19) if f.v == 4 else (socket.IPPROTO_IPV6, 75)
        for src, to, payload in (
            ((f.client_pod, sport), self.dst, SPOOF_PAYLOAD),
            (self.server, (f.client_pod, sport), FORGED),
        ):
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setsockopt(level, opt, 1)  # IP_TRANSPARENT / IPV6_TRANSPARENT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(src)
                for _ in range(3):
                    sock.sendto(payload, to)
        proto = socket.IPPROTO_ICMP if f.v == 4 else socket.IPPROTO_ICMPV6
        with socket.socket(family, socket.SOCK_RAW, proto) as raw:
            body = self.quoted_query(sport)
            if f.v == 4:  # type 3 code 3; the kernel adds the outer header
                msg = struct.pack("!BBHI", 3, 3, 0, 0) + body
                msg = msg[:2] + struct.pack("!H", _checksum(msg)) + msg[4:]
            else:  # type 1 code 4; the kernel computes the ICMPv6 checksum
                msg = struct.pack("!BBHI", 1, 4, 0, 0) + body
            for _ in range(3):
                raw.sendto(msg, (f.client_pod, 0))


def _query(attacks: list[Attack]) -> list[socket.socket]:
    """In the client pod: each attack's flow, one query on a connected socket."""
    socks = []
    for a in attacks:
        sock = socket.socket(socket.AF_INET if a.f.v == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        socks.append(sock)
        sock.setblocking(False)
        sock.connect(a.dst)
        qtype = agent.QTYPE_A if a.f.v == 4 else agent.QTYPE_AAAA
        sock.send(agent.build_query(QID, "probe.cluster.local", qtype))
    return socks


def _received(sock: socket.socket) -> list[str]:
    """What the socket has now: answers, forged data, errors (ICMP), in order."""
    got: list[str] = []
    while True:
        try:
            data = sock.recv(512)
        except BlockingIOError:
            return got
        except ConnectionRefusedError:
            got.append("refused")
            continue
        if data == FORGED:
            got.append("forged")
        else:
            try:
                got.append(f"answer {agent.parse_answer(data, QID)}")
            except ValueError:
                got.append(f"data {data!r}")


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    addrs = [g.cni_gw for g in FAMILIES]
    spec = {"addrs": addrs, "ports": [SPOOF_PORT], "answers": ANSWERS["tunnel"]}
    lab = Lab(MullvadState("connected", False, True), settled=True)
    with lab.built(extra_agents={"host": {"dns": [spec]}}):
        # Every reject of Mullvad's answered, not one a second per destination.
        lab["host"].sysctl({"net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0})
        ours = run_generator(lab, "generate", own=True).stdout
        yield Cells(lab, arm_tables(lab, control=weakened(ours, delete=[ARRIVING_DROP])))


def _settle(lab: Lab, attacks: list[Attack]) -> None:
    """Until everything sent so far has arrived, and the servers have answered it."""
    lab.barrier()
    for a in attacks:
        answered_locally(lab, a.receiver, *a.server)
    lab.barrier()


def run(cells: Cells, cell: Cell) -> dict[Attack, tuple[str, list[str], int]]:
    """Per attack: (the pod's own query's outcome, what its socket got from the
    injection, spoofed queries counted at the server)."""
    lab = cells.lab
    cells.enter(cell)
    attacks = [
        Attack(f, flow)
        for f in FAMILIES
        for flow in (("clusterip", "node") if cell.br_nf else ("node",))
    ]
    for role in ("coredns", "host"):
        lab[role].exec("nft", "reset", "counters", "table", "inet", "netlab_rx")
    if cell.lan:  # the host solicits the pods: their IPv6 needs the neighbours
        for pod in (V6.client_pod, V6.dns_pod):
            lab["host"].call(partial(tcp_connect, pod, 9))
    socks = lab["client"].call(partial(_query, attacks))
    try:
        _settle(lab, attacks)
        own = {a.key: _received(sock) for a, sock in zip(attacks, socks, strict=True)}
        for a, sock in zip(attacks, socks, strict=True):
            lab["lan"].call(partial(a.inject, sock.getsockname()[1]))
        _settle(lab, attacks)
        got = {a.key: _received(sock) for a, sock in zip(attacks, socks, strict=True)}
    finally:
        for sock in socks:
            sock.close()
    spoofed = {role: read_counters(lab[role], "netlab_rx") for role in ("coredns", "host")}
    return {
        a: (
            " ".join(own[a.key]) or "nothing",
            got[a.key],
            spoofed[a.receiver][watch_name(SPOOF_RECEIVERS[a.receiver], a.f)],
        )
        for a in attacks
    }


def expected(attack: Attack, cell: Cell) -> tuple[str, set[str], bool]:
    """(the pod's own query's outcome, what its socket gets from the injection, spoofed
    queries delivered?)"""
    answer = (
        "answer "
        + ANSWERS["coredns" if attack.flow == "clusterip" else "tunnel"][
            "A" if attack.f.v == 4 else "AAAA"
        ]
    )
    if cell.arm == "generated":
        return answer, set(), False
    # Strict rp_filter (IPv4) drops the spoofed query and the forged answer: their
    # sources route back by cni0, not the LAN. Only the ICMP error is left.
    spoofing = not (cell.rp_filter == 1 and attack.f.v == 4)
    # A forged answer from the machine's own address is a martian to IPv4.
    forged = {"forged"} if spoofing and (attack.flow, attack.f.v) != ("node", 4) else set()
    if cell.arm == "control":  # every injected packet is a packet of the flow
        return answer, forged | {"refused"}, spoofing
    # Mullvad alone
    if attack.flow == "clusterip":  # port 53 rejected: no flow to inject into; with
        # LAN sharing, the reject of the spoofed query reaches the pod's port
        refused = {"refused"} if cell.lan and spoofing else set()
        return ("refused" if cell.lan else "nothing"), refused, False
    if not cell.lan:
        return "nothing", set(), False
    return answer, forged | {"refused"}, spoofing


def _cells() -> list[Cell]:
    """Connected first: going Blocked and back costs a reconnect."""
    return [
        Cell(state, lan, arm, rp_filter, br_nf)
        for state in ("connected", "blocked")
        for lan in (False, True)
        for rp_filter in (0, 2, 1)
        for br_nf in (True, False)
        for arm in ("none", "generated", "control")
    ]


@pytest.mark.parametrize("cell", _cells(), ids=lambda c: c.id)
def test_lan_host_cannot_inject_into_an_exempted_pod_flow(cells: Cells, cell: Cell) -> None:
    got = run(cells, cell)
    seen = {a.key: (own, set(kinds), spoofed > 0) for a, (own, kinds, spoofed) in got.items()}
    want = {a.key: expected(a, cell) for a in got}
    assert seen == want, {a.key: result for a, result in got.items()}
