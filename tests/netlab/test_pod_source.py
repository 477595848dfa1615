"""A pod source is a pod's only where it routes back (issue 21, findings 1 and 2).

Crafted packets from a pod-range source that is not the sender's, with raw-enough
sockets (IP_TRANSPARENT, a non-local bind):

* from a pod on the cluster's bridge `cni0`, a source that is not on this node
  (10.244.7.7: in POD_CIDRS 10.244.0.0/16, this node's pods are 10.244.0.0/24) - finding
  1: the table exempted it, and the replies, fwmarked, left by `eth0`;
* from a container on a bridge named `docker0` (in the default CLUSTER_INTERFACES) that
  is not the cluster's, the same source and one of this node's pod addresses (the
  client pod's own) - finding 2.

Each sends three things whose answers are counted where they leave the machine:

* a DNS query to the kube-dns ClusterIP (DNAT-ed to the CoreDNS pod), answer from :53;
* a SYN to the machine's sshd on the bridge address, answer a SYN-ACK from :22;
* a datagram to the CoreDNS pod's responder on :5300 (a UDP echo of the query).

What must hold, with our table and with Mullvad alone (the control: the expectation
below is Mullvad's, checked against it): the requests are delivered exactly as Mullvad
alone delivers them (never the DNS query, port 53; the others only with its LAN sharing
on, which accepts any private source), and no answer reaches the LAN link except where
Mullvad alone sends it there (Blocked with LAN sharing on: no tunnel, and a 10/8
destination is "LAN" to Mullvad). rp_filter 0 and 2 (strict, 1, hides both findings).
The client pod's queries from its own address are answered (the lab can tell).
IPv4 from both senders; IPv6 (fd00:10:244:7::7) from the pod, with LAN sharing on only
(IPv6 pods need it for neighbour discovery; the rp_filter sysctl is IPv4's, so the
IPv6 cases differ only in name there).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .nsutil import Netns
from .probes import tcp_connect
from .scenarios import load_bypass
from .topology import (
    ANSWERS,
    DNS_ALT_PORT,
    DOCKER0,
    HOST_SERVICE_PORT,
    OFF_NODE,
    V4,
    V6,
    Fam,
    Lab,
    counter_rules,
)

NAMES = ("dns", "sshd", "echo")
# The docker0 container is the lab's (topology.DOCKER0); OFF_NODE is in POD_CIDRS, not
# on this node.
SENDERS = {"pod": "client", "docker0": DOCKER0.role}
# (family, sender, whose source): IPv6 from the pod only (the docker0 stand-in is IPv4).
CASES = [
    (V4, "pod", "off_node"),
    (V4, "docker0", "off_node"),
    (V4, "docker0", "on_node"),
    (V6, "pod", "off_node"),
]


def _probes(f: Fam) -> dict[str, tuple[str, int, str]]:
    """name -> (destination, port, protocol)"""
    return {
        "dns": (f.kube_dns, 53, "udp"),
        "sshd": (f.cni_gw, HOST_SERVICE_PORT, "tcp"),
        "echo": (f.dns_pod, DNS_ALT_PORT, "udp"),
    }


def _source(f: Fam, whose: str) -> str:
    return OFF_NODE[f.v] if whose == "off_node" else f.client_pod


def _watches(f: Fam, src: str) -> dict[str, str]:
    """Answers to `src`, by the port they come from."""
    return {
        name: f"{f.nfproto} daddr {src} {proto} sport {port}"
        for name, (_dst, port, proto) in _probes(f).items()
    }


def _send(f: Fam, src: str) -> None:
    """In the sender's namespace: each probe three times from `src`."""
    query = agent.build_query(7, "probe.cluster.local", agent.QTYPE_A)
    family = socket.AF_INET if f.v == 4 else socket.AF_INET6
    # IP_TRANSPARENT / IPV6_TRANSPARENT: bind a non-local source
    level, opt = (socket.SOL_IP, 19) if f.v == 4 else (socket.IPPROTO_IPV6, 75)
    socks = []
    for dst, port, proto in _probes(f).values():
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.setsockopt(level, opt, 1)
        sock.bind((src, 0))
        sock.setblocking(False)
        if proto == "udp":
            for _ in range(3):
                sock.sendto(query, (dst, port))
        else:
            with contextlib.suppress(BlockingIOError):
                sock.connect((dst, port))  # the SYN; retransmitted while we wait
        socks.append(sock)
    time.sleep(1.2)
    for sock in socks:
        sock.close()


def _own_answer(f: Fam) -> str:
    """The client pod's query from its own address to the kube-dns ClusterIP; the first
    may wait for neighbour discovery (IPv6)."""
    qtype = agent.QTYPE_A if f.v == 4 else agent.QTYPE_AAAA
    answer = ""
    for qid in (9, 10, 11):
        try:
            msg = agent.build_query(qid, "own.cluster.local", qtype)
            return agent.parse_answer(agent.query_udp(f.kube_dns, 53, msg, 1.0), qid)
        except (OSError, ValueError) as exc:
            answer = f"no answer: {exc!r}"
    return answer


def _counts(ns: Netns, table: str, f: Fam) -> dict[str, int]:
    """Counters of `f`'s family (counter_rules makes both; ours match one family)."""
    data = json.loads(ns.exec("nft", "-j", "list", "counters", "table", "inet", table).stdout)
    suffix = f"_v{f.v}"
    return {
        item["counter"]["name"].removesuffix(suffix): int(item["counter"]["packets"])
        for item in data["nftables"]
        if "counter" in item and item["counter"]["name"].endswith(suffix)
    }


def _delivered_rules(f: Fam, src: str) -> dict[str, tuple[str, str]]:
    """Requests from `src` counted where they are received: namespace -> (table, rules),
    after Mullvad's input chain (priority 0) in the machine."""
    rules = {}
    probes = _probes(f)
    for role, priority, names in (("coredns", 0, ("dns", "echo")), ("host", 100, ("sshd",))):
        counters = "".join(f"\tcounter {n}_v{f.v} {{ }}\n" for n in names)
        body = "".join(
            f"\t\t{f.nfproto} saddr {src} {probes[n][2]} dport {probes[n][1]} "
            f'counter name "{n}_v{f.v}"\n'
            for n in names
        )
        rules[role] = (
            "table inet netlab_f1rx {\n" + counters + "\tchain rx {\n"
            f"\t\ttype filter hook input priority {priority}; policy accept;\n" + body + "\t}\n}\n"
        )
    return {role: ("netlab_f1rx", text) for role, text in rules.items()}


Case = tuple[Fam, str, str]


def run(case: Case, state: str, lan: bool, rp_filter: int, bypass: str) -> dict[str, Any]:
    f, sender, whose = case
    src = _source(f, whose)
    final = MullvadState(state, lan, True)
    lab = Lab(
        MullvadState("connected", lan, True) if bypass != "none" else final, rp_filter=rp_filter
    )
    try:
        lab.build()
        lab["host"].sysctl({f"net.ipv4.conf.{DOCKER0.name}.rp_filter": rp_filter})
        load_bypass(lab, bypass)
        if lab.mullvad != final:
            lab.set_mullvad(final)
        lab["lan"].nft(counter_rules("lanbr", _watches(f, src), table="netlab_f1"))
        lab["vpn"].nft(counter_rules("tun0", _watches(f, src), table="netlab_f1"))
        for role, (_table, text) in _delivered_rules(f, src).items():
            lab[role].nft(text)
        if f.v == 6:  # as in test_guard_v6: the host solicits the pods first
            for pod in (f.client_pod, f.dns_pod):
                lab["host"].call(lambda pod=pod: tcp_connect(pod, 9))
        lab[SENDERS[sender]].call(lambda: _send(f, src))
        time.sleep(0.1)
        delivered = {
            **_counts(lab["coredns"], "netlab_f1rx", f),
            **_counts(lab["host"], "netlab_f1rx", f),
        }
        # Then (its source is the on-node case's): the real pod is answered.
        own = lab["client"].call(lambda: _own_answer(f)) if bypass != "none" else ""
        return {
            "delivered": delivered,
            "lan": _counts(lab["lan"], "netlab_f1", f),
            "tunnel": _counts(lab["vpn"], "netlab_f1", f),
            "own": own,
        }
    finally:
        lab.destroy()


def expected(whose: str, state: str, lan: bool) -> tuple[dict[str, bool], dict[str, bool]]:
    """Mullvad alone: (delivered?, answered on the LAN link?) per probe."""
    delivered = {"dns": False, "sshd": lan, "echo": lan}
    on_lan = {n: d and whose == "off_node" and state == "blocked" for n, d in delivered.items()}
    return delivered, on_lan


def _combinations() -> list[Any]:
    """Each case in each state, LAN sharing and rp_filter, with our table and with Mullvad
    alone (once per state: rp_filter does not change Mullvad); IPv6 pods only with LAN
    sharing on (their neighbour discovery needs it, see tests/netlab)."""
    out = []
    for case in CASES:
        f, sender, whose = case
        for state in ("connected", "blocked"):
            for lan in (False, True):
                if f.v == 6 and not lan:
                    continue
                for rp_filter, bypass in ((0, "generated"), (2, "generated"), (2, "none")):
                    ident = (
                        f"v{f.v}-{sender}-{whose}-{state}-{'lan_on' if lan else 'lan_off'}-"
                        f"rp_filter{rp_filter}-{bypass}"
                    )
                    out.append(pytest.param(case, state, lan, rp_filter, bypass, id=ident))
    return out


@pytest.mark.parametrize(("case", "state", "lan", "rp_filter", "bypass"), _combinations())
def test_a_pod_source_that_does_not_route_back_is_not_a_pod(
    case: Case, state: str, lan: bool, rp_filter: int, bypass: str
) -> None:
    f, _sender, whose = case
    got = run(case, state, lan, rp_filter, bypass)
    want_delivered, want_lan = expected(whose, state, lan)
    seen = {
        "delivered": {n: got["delivered"][n] > 0 for n in NAMES},
        "lan": {n: got["lan"][n] > 0 for n in NAMES},
    }
    assert seen == {"delivered": want_delivered, "lan": want_lan}, got
    if bypass == "generated":  # CoreDNS answers the real pod
        assert got["own"] == ANSWERS["coredns"]["A" if f.v == 4 else "AAAA"], got
