"""An exempted flow the cluster started leaves only by a cluster interface (issue 21,
finding 5, and the guard behind finding 1).

* This machine's own connection to a ClusterIP that kube-proxy DNAT-s to a pod-range
  address not on this node (a pod on another node with nothing routing it here): in
  Mullvad's Blocked state the route is the LAN's default route, and the table exempted
  the flow (output's new-flow rules skip the interface test after DNAT: the output
  hook's interface is the one routing chose before DNAT). A ClusterIP with such an
  endpoint is made by a DNAT rule in a table of the test's, kube-proxy's way (nat,
  output hook, priority -100), so the lab's Services stay as they are. TCP (a SYN) and
  UDP; counted on the LAN link and in the tunnel, by destination.
* A pod's exempted UDP flow to a resolver on the machine's bridge address, answered
  once; then the route to the pod changes (the pod moved: another node's route via the
  LAN, a host-gw route): the resolver's next answers, fwmarked, would take it to the
  LAN. Mullvad's LAN sharing off (with it on, Mullvad alone takes a pod's query from
  any private source and sends the answer to the LAN itself).

Each with Mullvad alone as the control (which never sends either to the LAN, but for
the first with LAN sharing on in its Blocked state: a 10/8 destination is "LAN" to it;
the table drops that one, see README), Connected and Blocked.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .scenarios import load_bypass
from .topology import ANSWERS, DNS_ALT_PORT, V4, Lab, counter_rules

OFF_NODE = "10.244.7.7"  # in POD_CIDRS, on no interface of this node
CLUSTER_IP = "10.96.0.77"  # a ClusterIP (SERVICE_CIDRS) whose endpoint is OFF_NODE
DNAT = (
    "table ip netlab_f5 {\n\tchain out {\n\t\ttype nat hook output priority -100;\n"
    f"\t\tip daddr {CLUSTER_IP} dnat to {OFF_NODE}\n\t}}\n}}\n"
)


def _lab(
    state: str, lan: bool, bypass: str, extra_agents: dict[str, dict[str, Any]] | None = None
) -> Lab:
    final = MullvadState(state, lan, True)
    lab = Lab(MullvadState("connected", lan, True) if bypass != "none" else final)
    lab.build(extra_agents=extra_agents)
    load_bypass(lab, bypass)
    if lab.mullvad != final:
        lab.set_mullvad(final)
    return lab


def _count(lab: Lab, role: str, table: str) -> int:
    out = lab[role].exec("nft", "list", "counter", "inet", table, "out_v4").stdout
    return int(out.split("packets ")[1].split()[0])


def _connect_to_cluster_ip() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setblocking(False)
        with contextlib.suppress(OSError):
            tcp.connect((CLUSTER_IP, 80))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(3):
                with contextlib.suppress(OSError):
                    udp.sendto(b"probe", (CLUSTER_IP, DNS_ALT_PORT))
                time.sleep(0.05)
        time.sleep(1.0)  # SYN retransmissions


def dnat_off_node(state: str, lan: bool, bypass: str) -> tuple[int, int]:
    """(packets to OFF_NODE on the LAN link, in the tunnel)."""
    lab = _lab(state, lan, bypass)
    try:
        host = lab["host"]
        host.nft(DNAT)
        watch = {"out": f"ip daddr {OFF_NODE}"}
        lab["lan"].nft(counter_rules("lanbr", watch, table="netlab_f5"))
        lab["vpn"].nft(counter_rules("tun0", watch, table="netlab_f5"))
        host.call(_connect_to_cluster_ip)
        return _count(lab, "lan", "netlab_f5"), _count(lab, "vpn", "netlab_f5")
    finally:
        lab.destroy()


@pytest.mark.parametrize("bypass", ["generated", "none"])
@pytest.mark.parametrize("lan", [False, True], ids=["lan_off", "lan_on"])
@pytest.mark.parametrize("state", ["connected", "blocked"])
def test_this_machines_connection_dnat_ed_off_node_never_leaves_by_the_lan(
    state: str, lan: bool, bypass: str
) -> None:
    on_lan, _tunnel = dnat_off_node(state, lan, bypass)
    mullvad_alone_sends_it = state == "blocked" and lan
    if bypass == "none":
        assert (on_lan > 0) == mullvad_alone_sends_it, on_lan
    else:
        assert on_lan == 0


def reply_after_route_change(state: str, bypass: str) -> tuple[str, int]:
    """(the pod's first answer, the resolver's answers to the pod on the LAN link)."""
    spec = {"addrs": [V4.cni_gw], "ports": [DNS_ALT_PORT], "answers": ANSWERS["tunnel"]}
    lab = _lab(state, False, bypass, extra_agents={"host": {"dns": [spec]}})
    try:
        watch = {"out": f"ip daddr {V4.client_pod} udp sport {DNS_ALT_PORT}"}
        lab["lan"].nft(counter_rules("lanbr", watch, table="netlab_f1g"))

        def ask(sock: socket.socket, qid: int) -> str:
            sock.send(agent.build_query(qid, "probe.cluster.local", agent.QTYPE_A))
            try:
                return agent.parse_answer(sock.recv(512), qid)
            except OSError as exc:
                return f"no answer: {exc!r}"

        sock = lab["client"].call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with sock:
            sock.settimeout(1.0)
            sock.connect((V4.cni_gw, DNS_ALT_PORT))
            first = ask(sock, 1)
            # The pod "moved": its address now routes by the LAN.
            lab["host"].ip(f"route add {V4.client_pod}/32 via {V4.router} dev eth0\n")
            for qid in (2, 3, 4):
                ask(sock, qid)
        return first, _count(lab, "lan", "netlab_f1g")
    finally:
        lab.destroy()


@pytest.mark.parametrize("bypass", ["generated", "none"])
@pytest.mark.parametrize("state", ["connected", "blocked"])
def test_replies_of_a_pods_exempted_flow_never_leave_by_the_lan_after_its_route_changes(
    state: str, bypass: str
) -> None:
    first, on_lan = reply_after_route_change(state, bypass)
    assert on_lan == 0
    # The flow was exempted (answered) with the table; Mullvad alone (LAN sharing off)
    # never lets the pod's query in.
    assert first.startswith("no answer") == (bypass == "none"), first
