"""A LAN host cannot inject packets into a pod's exempted flow (issue 21, finding 3).

The pod's DNS query to the kube-dns ClusterIP is exempted (its flow carries the ct
mark). Then the LAN router, which routes the cluster ranges to the node as a LAN host
could, sends three packets that conntrack files under that flow, from the LAN side:

* a spoofed query: the pod's own address and port to the ClusterIP (original
  direction), counted in the CoreDNS pod by its payload;
* a forged answer: the CoreDNS pod's address and port 53 to the pod's port (reply
  direction), which the pod's connected socket takes as the ClusterIP's answer;
* an ICMP port-unreachable from the router's own address (no spoofing at all, so
  strict rp_filter passes it), quoting the query, which the pod's socket reports as
  ECONNREFUSED: its DNS breaks.

None may arrive: a packet of a flow the cluster started that comes in on an interface
that is not the cluster's is forged. Two flows: to the ClusterIP (forwarded to the
CoreDNS pod) and to a resolver on this machine's bridge address (delivered here); the
latter with br_netfilter and without it (the attack is routed, so it meets the inet
hooks either way). IPv4 with Mullvad's LAN sharing off;
IPv6 with it on (IPv6 pods need it for neighbour discovery, notes in README), where
Mullvad alone rejects the spoofed query (port 53) and our exemption let it through.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .probes import TIMEOUT
from .scenarios import load_bypass
from .topology import (
    ANSWERS,
    FAMILIES,
    SPOOF_PAYLOAD,
    SPOOF_PORT,
    SPOOF_RECEIVERS,
    Fam,
    Lab,
    watch_name,
)

FORGED = b"forged answer"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _quoted_query(f: Fam, sport: int, server: tuple[str, int]) -> bytes:
    """The pod's query as it left towards the CoreDNS pod (after DNAT): IP header and
    the first 8 bytes of UDP, as an ICMP error quotes it."""
    udp = struct.pack("!HHHH", sport, server[1], 8 + 30, 0)
    src = socket.inet_pton(socket.AF_INET if f.v == 4 else socket.AF_INET6, f.client_pod)
    dst = socket.inet_pton(socket.AF_INET if f.v == 4 else socket.AF_INET6, server[0])
    if f.v == 6:
        return struct.pack("!IHBB", 6 << 28, 8 + 30, 17, 64) + src + dst + udp
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + 8 + 30, 1, 0, 64, 17, 0) + src + dst
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + udp


def _inject(f: Fam, sport: int, dst: tuple[str, int], server: tuple[str, int]) -> None:
    """In the LAN router's namespace: the three packets (see the module docstring).
    `dst` is where the pod sends its queries, `server` where they go after DNAT."""
    family = socket.AF_INET if f.v == 4 else socket.AF_INET6
    level, opt = (socket.SOL_IP, 19) if f.v == 4 else (socket.IPPROTO_IPV6, 75)
    for src, to, payload in (
        ((f.client_pod, sport), dst, SPOOF_PAYLOAD),
        (server, (f.client_pod, sport), FORGED),
    ):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(level, opt, 1)  # IP_TRANSPARENT / IPV6_TRANSPARENT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(src)
            for _ in range(3):
                sock.sendto(payload, to)
    proto = socket.IPPROTO_ICMP if f.v == 4 else socket.IPPROTO_ICMPV6
    with socket.socket(family, socket.SOCK_RAW, proto) as raw:
        body = _quoted_query(f, sport, server)
        if f.v == 4:  # type 3 code 3; the kernel adds the outer header
            msg = struct.pack("!BBHI", 3, 3, 0, 0) + body
            msg = msg[:2] + struct.pack("!H", _checksum(msg)) + msg[4:]
        else:  # type 1 code 4; the kernel computes the ICMPv6 checksum
            msg = struct.pack("!BBHI", 1, 4, 0, 0) + body
        for _ in range(3):
            raw.sendto(msg, (f.client_pod, 0))


# The pod's flow: to the kube-dns ClusterIP (DNAT-ed to the CoreDNS pod on the same
# bridge: only with br_netfilter, which un-DNATs the bridged replies), or to a resolver
# on this machine's bridge address (routed: with and without br_netfilter), whose port
# is the one the host's receiver counts spoofed payloads on (after Mullvad's input).
FLOWS = ("clusterip", "node")


def attack(f: Fam, lan: bool, br_nf: bool, flow: str) -> tuple[str, list[str], int]:
    """(the pod's real query outcome, what its socket got afterwards, spoofed queries
    counted at the server)."""
    lab = Lab(MullvadState("connected", lan, True), br_nf=br_nf)
    if flow == "clusterip":
        dst, server, receiver = (f.kube_dns, 53), (f.dns_pod, 53), "coredns"
    else:
        dst = server = (f.cni_gw, SPOOF_PORT)
        receiver = "host"
    try:
        addrs = [g.cni_gw for g in FAMILIES]
        lab.build(
            extra_agents={
                "host": {
                    "dns": [{"addrs": addrs, "ports": [SPOOF_PORT], "answers": ANSWERS["tunnel"]}]
                }
            }
        )
        load_bypass(lab, "generated")
        family = socket.AF_INET if f.v == 4 else socket.AF_INET6
        sock = lab["client"].call(lambda: socket.socket(family, socket.SOCK_DGRAM))
        with sock:
            sock.settimeout(TIMEOUT)
            sock.connect(dst)
            qtype = agent.QTYPE_A if f.v == 4 else agent.QTYPE_AAAA
            answer = ""
            for _ in range(3):  # the first may wait for neighbour discovery (IPv6)
                sock.send(agent.build_query(7, "probe.cluster.local", qtype))
                try:
                    answer = agent.parse_answer(sock.recv(512), 7)
                    break
                except OSError as exc:
                    answer = f"no answer: {exc!r}"
            if answer.startswith("no answer"):
                return answer, [], 0
            sport = sock.getsockname()[1]
            got: list[str] = []

            def listen() -> None:
                end = time.monotonic() + 1.5
                sock.settimeout(0.2)
                while time.monotonic() < end:
                    try:
                        got.append(f"data {sock.recv(512)!r}")
                    except TimeoutError:
                        continue
                    except OSError as exc:
                        got.append(f"error {exc!r}")

            listener = threading.Thread(target=listen)
            listener.start()
            lab["lan"].call(lambda: _inject(f, sport, dst, server))
            listener.join()
        name = watch_name(SPOOF_RECEIVERS[receiver], f)
        out = lab[receiver].exec("nft", "list", "counter", "inet", "netlab_rx", name).stdout
        spoofed = int(out.split("packets ")[1].split()[0])
        return f"answer {answer}", got, spoofed
    finally:
        lab.destroy()


CASES = [(FAMILIES[0], False), (FAMILIES[1], True)]


@pytest.mark.parametrize(
    "flow,br_nf",
    [("clusterip", True), ("node", True), ("node", False)],
    ids=["clusterip-br_nf", "node-br_nf", "node-no_br_nf"],
)
@pytest.mark.parametrize("f,lan", CASES, ids=["v4-lan_off", "v6-lan_on"])
def test_lan_host_cannot_inject_into_an_exempted_pod_flow(
    f: Fam, lan: bool, flow: str, br_nf: bool
) -> None:
    answer, got, spoofed = attack(f, lan, br_nf, flow)
    assert answer.startswith("answer "), answer
    assert (got, spoofed) == ([], 0), (
        f"the pod got {got}; {spoofed} spoofed queries reached the server"
    )
