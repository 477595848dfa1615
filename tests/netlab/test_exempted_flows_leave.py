"""An exempted flow the cluster started leaves only by a cluster interface (issue 21,
finding 5, and the guard behind finding 1).

* This machine's own connection to a ClusterIP that kube-proxy DNAT-s to a pod-range
  address not on this node (a pod on another node with nothing routing it here): in
  Mullvad's Blocked state the route is the LAN's default route, and the table exempted
  the flow (output's new-flow rules skip the interface test after DNAT: the output
  hook's interface is the one routing chose before DNAT). A ClusterIP with such an
  endpoint is made by a DNAT rule in a table of the test's, kube-proxy's way (nat,
  output hook, priority -100), so the lab's Services stay as they are. TCP (a SYN) and
  UDP; counted on the LAN link, by destination.
* A pod's exempted UDP flow to a resolver on the machine's bridge address, answered
  once; then the route to the pod changes (the pod moved: another node's route via the
  LAN, a host-gw route): the resolver's next answers, fwmarked, would take it to the
  LAN. Counted on the LAN link.

The matrix, in one lab (scenarios.Cells): Mullvad Connected and Blocked (our table
applied while connected), LAN sharing off and on, three arms:

* "none", Mullvad alone: the machine's connection reaches the LAN only in Blocked with
  LAN sharing on (a 10/8 destination is "LAN" to it); Connected, it goes into the
  tunnel. The pod's query is let in only with LAN sharing on, and then Mullvad sends
  the answers after the route change to the LAN itself (a private destination);
* "generated", our table: nothing reaches the LAN link, in any cell (better than
  Mullvad alone where that sends it: the flows were the cluster's, and leave by no
  cluster interface); the pod's first query is answered;
* "control", our table without postrouting_guard's drop (issue 21's rule for these):
  the machine's connection reaches the LAN (with LAN sharing off too), and the answers
  after the route change, in every cell.

Not run: the machine's connection in Mullvad's Connected state, where it goes into the
tunnel with or without our table, and Mullvad's nat chain drops an exempted flow's
packets there: nothing can reach the LAN, whatever the guard does (finding 5 is a
Blocked finding); rp_filter for it (no rp_filter sees a flow this machine sends). The
pod's flow runs with rp_filter 0 and 2 (its later queries arrive on `cni0` while its
address routes by the LAN: both let them in); strict rp_filter (1) drops them and
says nothing. Connections are judged after Lab.barrier and an answer of the
resolver's, not after a timeout.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from functools import partial

import pytest

from . import agent
from .mullvad_emu import MullvadState
from .scenarios import (
    LEAVING_DROP,
    Cell,
    Cells,
    answered_locally,
    arm_tables,
    run_generator,
    weakened,
)
from .topology import ANSWERS, DNS_ALT_PORT, V4, Lab, named_counters, read_counters

OFF_NODE = "10.244.7.7"  # in POD_CIDRS, on no interface of this node
CLUSTER_IP = "10.96.0.77"  # a ClusterIP (SERVICE_CIDRS) whose endpoint is OFF_NODE
DNAT = (
    "table ip netlab_f5 {\n\tchain out {\n\t\ttype nat hook output priority -100;\n"
    f"\t\tip daddr {CLUSTER_IP} dnat to {OFF_NODE}\n\t}}\n}}\n"
)
WATCH = {  # what each test counts on the LAN link
    "to_off_node": f"ip daddr {OFF_NODE}",
    "answers": f"ip daddr {V4.client_pod} udp sport {DNS_ALT_PORT}",
}
HEAD = "type filter hook prerouting priority -400; policy accept;"


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    spec = {"addrs": [V4.cni_gw], "ports": [DNS_ALT_PORT], "answers": ANSWERS["tunnel"]}
    lab = Lab(MullvadState("connected", False, True))
    with lab.built(extra_agents={"host": {"dns": [spec]}}):
        lab["host"].nft(DNAT)
        control = weakened(run_generator(lab, "generate", own=True).stdout, delete=[LEAVING_DROP])
        yield Cells(lab, arm_tables(lab, control=control))


def _count(lab: Lab, name: str) -> None:
    """The watch's counter on the LAN link, from 0 (table netlab_f5 in the LAN router)."""
    lab["lan"].nft(named_counters("netlab_f5", HEAD, {name: f'iifname "lanbr" {WATCH[name]}'}))


def _connect_to_cluster_ip() -> list[socket.socket]:
    """This machine's SYN and three datagrams to the ClusterIP; the sockets stay open
    until the counters are read."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp.setblocking(False)
    with contextlib.suppress(OSError):
        tcp.connect((CLUSTER_IP, 80))
    for _ in range(3):
        with contextlib.suppress(OSError):  # Mullvad's reject, when it rejects
            udp.sendto(b"probe", (CLUSTER_IP, DNS_ALT_PORT))
    return [tcp, udp]


def dnat_off_node(cells: Cells, cell: Cell) -> int:
    """Packets to OFF_NODE on the LAN link."""
    lab = cells.lab
    cells.enter(cell)
    _count(lab, "to_off_node")
    socks = lab["host"].call(_connect_to_cluster_ip)
    try:
        lab.barrier()  # machine -> LAN router: one hop
    finally:
        for sock in socks:
            sock.close()
    return read_counters(lab["lan"], "netlab_f5")["to_off_node"]


def _cells(states: tuple[str, ...], rp_filters: tuple[int, ...]) -> list[Cell]:
    return [
        Cell(state, lan, arm, rp_filter)
        for state in states
        for lan in (False, True)
        for rp_filter in rp_filters
        for arm in ("none", "generated", "control")
    ]


@pytest.mark.parametrize("cell", _cells(("blocked",), (2,)), ids=lambda c: c.id)
def test_this_machines_connection_dnat_ed_off_node_never_leaves_by_the_lan(
    cells: Cells, cell: Cell
) -> None:
    on_lan = dnat_off_node(cells, cell)
    want = {
        "none": cell.lan,  # Mullvad alone: its LAN sharing
        "generated": False,
        "control": True,  # exempted, nothing stops it
    }[cell.arm]
    assert (on_lan > 0) == want, on_lan


def _ask(sock: socket.socket, qid: int) -> None:
    sock.send(agent.build_query(qid, "probe.cluster.local", agent.QTYPE_A))


def _answer(lab: Lab, sock: socket.socket, qid: int) -> str:
    """The resolver's answer to query `qid` if it came, after it answered everything
    sent so far and the answers went their way."""
    lab.barrier()
    answered_locally(lab, "host", V4.cni_gw, DNS_ALT_PORT)
    lab.barrier()
    sock.setblocking(False)
    try:
        return agent.parse_answer(sock.recv(512), qid)
    except (OSError, ValueError):
        return "no answer"


def reply_after_route_change(cells: Cells, cell: Cell) -> tuple[str, int]:
    """(the pod's first answer, the resolver's answers to the pod on the LAN link)."""
    lab = cells.lab
    cells.enter(cell)
    _count(lab, "answers")
    sock = lab["client"].call(partial(socket.socket, socket.AF_INET, socket.SOCK_DGRAM))
    moved = f"{V4.client_pod}/32 via {V4.router} dev eth0"
    try:
        sock.connect((V4.cni_gw, DNS_ALT_PORT))
        _ask(sock, 1)
        first = _answer(lab, sock, 1)
        lab["host"].ip(f"route add {moved}\n")  # the pod "moved": its address by the LAN
        for qid in (2, 3, 4):
            _ask(sock, qid)
        _answer(lab, sock, 4)
    finally:
        sock.close()
        lab["host"].ip(f"route del {moved}\n")
    return first, read_counters(lab["lan"], "netlab_f5")["answers"]


@pytest.mark.parametrize("cell", _cells(("connected", "blocked"), (0, 2)), ids=lambda c: c.id)
def test_replies_of_a_pods_exempted_flow_never_leave_by_the_lan_after_its_route_changes(
    cells: Cells, cell: Cell
) -> None:
    first, on_lan = reply_after_route_change(cells, cell)
    # The flow was exempted (answered) with the tables; Mullvad alone lets the pod's
    # query in with LAN sharing only.
    answered = cell.arm != "none" or cell.lan
    assert first == (ANSWERS["tunnel"]["A"] if answered else "no answer"), first
    want = {"none": cell.lan, "generated": False, "control": True}[cell.arm]
    assert (on_lan > 0) == want, on_lan
