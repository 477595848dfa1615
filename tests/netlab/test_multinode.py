"""A multi-node kind cluster on Podman beside Mullvad (issue 23, items 1 and 2): what
never leaves the node network's bridge is the cluster's, and a node's DNS to its own
network's gateway is exempted; everything else of the nodes stays Mullvad's.

The lab's machine (Mullvad connected, br_netfilter on, as Docker turns it on) gets, from
the real Podman, the kind network (a `br-<id>` bridge, 172.18.0.0/16 and kind's ULA)
with two nodes, and a second network with a container that is not the cluster's
(`multinode.py` says what is real and what is by hand). Each node has a pod; kindnet
routes the other node's pod range via that node (IPv4, IPv6), flannel's VXLAN (k3d's
k3s, UDP 8472) carries a second pod range between them. A DNS responder on the
gateway addresses stands for Podman's aardvark-dns.

One lab, five cells, switched inside it (Mullvad's table reloaded, ours or the leaky
control loaded or removed, conntrack flushed, the counters reset): Mullvad alone with
LAN sharing off and on, our table (`--preset kind --node-networks "172.18.0.0/16@br-*
fc00:f853:ccd:e793::/64@br-*"`, the preset's own bridge pattern, which also names the
other network's bridge) with LAN sharing off, and on with CLUSTER_INTERFACES not naming
the node bridge, and a leaky control (the kind bridge and network exempted by
address and interface pattern). The cluster's probes
(host -> node and its published ports, node <-> node bridged, pod -> pod across nodes
by kindnet and by VXLAN, IPv6 between the nodes and their pods, node -> gateway :53 UDP
and TCP) work with LAN sharing or our table, each server seeing the client's own
address (but where the CNI portmap plugin masquerades the machine's own connections).
The rest stays as Mullvad alone has it: node -> an outside resolver (0 packets on the LAN and in the
tunnel), node -> internet (by the tunnel only), node -> the other network's gateway :53
and its container (routed from one br-* bridge to another), that container -> a node,
LAN and off-link clients -> an unpublished node port (no reply on the LAN), node -> the
machine's sshd, a pod -> another pod on cni0 (bridged, not on a node bridge), the machine
and a LAN client -> a port published to a node-range address on docker0 (multinode.STALE);
and the leaky control fails exactly the probes in CAUGHT.

And each rule of our table here that the main lab's lacks is decided by traffic: its
mutants (bench/mutation.py) loaded in place of our table in the lab's cells of our
table, the probes run against each (test_every_node_rule_is_decided_by_traffic).
"""

# ruff: noqa: E501 (NODE_SURVIVORS_WITH_REASON: the rules as they are, one a line)

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from bench import mutation

from . import kind, mullvad_emu, multinode
from .mullvad_emu import MullvadState
from .multinode import API_PORT, KUBELET_PORT, POD_PORT, Cluster
from .nsutil import LabError, flush_conntrack
from .probes import Expect, Outcome, Probe, Scenario, _dns, _tcp, check, ok_if, tcp_connect
from .probes import timeout as probes_timeout
from .scenarios import run_generator, run_probes
from .topology import (
    DOCKER0,
    HOST_SERVICE_PORT,
    INET_POD,
    V4,
    V6,
    WEB_PORT,
    Fam,
    Lab,
    counter_rules,
    named_counters,
    read_counters,
)

PODMAN_MISSING = kind.unavailable()
TABLE = "netlab_nodes"
OUR_TABLE = "table inet mullvad_allow_k8s\ndelete table inet mullvad_allow_k8s\n"
LEAKY_TABLE = "netlab_leaky_multinode"
WATCHES = {
    "node_dns": "{ip} daddr {outside_dns_pod} meta l4proto {{ tcp, udp }} th dport 53",
    "node_inet": "{ip} daddr {internet} tcp dport " + str(INET_POD),
    "remote_node": "{ip} daddr {remote} tcp sport " + str(KUBELET_PORT),
}
NODE_NETWORKS = f"{multinode.SUBNET}@br-* {kind.ULA_SUBNET}@br-*"
SETTINGS = {
    "PRESET": "kind",
    "NODE_NETWORKS": NODE_NETWORKS,
    "POD_CIDRS": "",
    "SERVICE_CIDRS": "",
    "HOST_PORTS": "",
}
LAN_OFF, LAN_ON = MullvadState("connected", allow_lan=False), MullvadState("connected", True)
# name -> (scenario, settings added to SETTINGS). LAN sharing off first: a cell with it
# on lets replies into the tunnel that a later cell must not count.
CELLS: dict[str, tuple[Scenario, dict[str, str]]] = {
    "alone_lan_off": (Scenario(LAN_OFF, "none"), {}),
    "ours_lan_off": (Scenario(LAN_OFF, "generated"), {}),
    "leaky": (Scenario(LAN_OFF, "leaky"), {}),
    "alone_lan_on": (Scenario(LAN_ON, "none"), {}),
    # Also CLUSTER_INTERFACES naming only CNI bridges, not the node network's: its
    # bridge counts as a cluster interface anyway (else the guards would drop the flows,
    # LAN sharing or not).
    "ours_lan_on_cni": (Scenario(LAN_ON, "generated"), {"CLUSTER_INTERFACES": "cni*"}),
}
# The stale node address gone in Mullvad's Blocked state, LAN sharing off (issue 23): Mullvad
# alone (the control), and our table applied while connected, Mullvad blocked after.
BLOCKED = MullvadState("blocked", allow_lan=False)
STALE_OUT = "netlab_stale_out"  # in lan (on lanbr) and vpn (on tun0): packets to STALE
# The cluster's own traffic: fails with Mullvad alone and LAN sharing off, works with
# our table (and with LAN sharing).
CLUSTER = {
    "host_node_v4",
    "host_published_v4",
    "host_node_v6",
    "host_published_v6",
    "node_node_api_v4",
    "node_node_kubelet_v4",
    "pod_pod_v4",
    "pod_pod_vxlan_v4",
    "node_gateway_dns_udp_v4",
    "node_gateway_dns_tcp_v4",
    "node_node_api_v6",
    "pod_pod_v6",
    "node_gateway_dns_udp_v6",
    "node_gateway_dns_tcp_v6",
}
# What the leaky control must fail: the nodes' own traffic leaves by the LAN, reaches
# the other network and this machine's sshd, the LAN reaches an unpublished node port,
# the in-tunnel resolver breaks (Mullvad's nat chain drops ct-marked flows into the
# tunnel), Mullvad's masquerade hides the nodes' and pods' addresses from each
# other (flannel's inner addresses survive it), and the machine and the LAN reach the
# node-range address on docker0 (exempted by address).
CAUGHT = {
    "lan_stale_udp_v4",
    "lan_stale_udp_v6",
    "host_stale_v4",
    "host_stale_v6",
    "lan_stale_v4",
    "lan_stale_v6",
    "node_node_api_v4",
    "node_node_kubelet_v4",
    "pod_pod_v4",
    "node_node_api_v6",
    "pod_pod_v6",
    "node_outside_dns_udp_v4",
    "node_outside_dns_tcp_v4",
    "node_inet_v4",
    "node_tunnel_dns_v4",
    "node_other_gateway_dns_v4",
    "node_other_v4",
    "other_node_v4",
    "lan_node_v4",
    "remote_node_v4",
    "node_sshd_gateway_v4",
    "node_sshd_lan_v4",
}


# The mutation check of the node table (issue 22 items 1 and 2 for issue 23's rules):
# bench/mutation.py's mutants of every rule of our table here that the sweep of the
# main lab's table (test_mutation) does not make, its NODE_WEAKENINGS of the same-bridge
# test, and the node bridge taken out of cluster_interfaces, each loaded in place of our
# table in the cells named here, in order (a mutant stops at the first whose probes kill
# it). The bridge's removal is that mutation only where CLUSTER_INTERFACES does not name
# the bridge itself: tried in those cells only.
MUTATION_CELLS = ("ours_lan_off", "ours_lan_on_cni")
MUTANT_TIMEOUT = 0.5  # s, the probes' timeout in mutants (an answer takes milliseconds)
NODE_BRIDGE_OUT = ("cluster_interfaces", '"br-*"')
# Mutants of the node table no probe here kills, each with the reason (as test_mutation's
# SURVIVORS_WITH_REASON); the test fails when one is killed or a survivor is not here.
_SHORTCUT = (
    "returns only flows that the rules after it leave marked (its comment: 'passes every "
    "test below too'): to an address and bridge of {node}, by a cluster interface, not "
    "from a ClusterIP, where rule 3 needs a ClusterIP origin, rule 4 an address and bridge "
    "outside {node} and rule 5 an interface outside cluster_interfaces. Deleted, no "
    "verdict changes; a forwarded node flow's first packet meets 2 rules more. "
)
NODE_SURVIVORS_WITH_REASON: dict[str, str] = {
    "delete forward_guard_new_v4[2]: ip daddr . oifname @node_v4 oifname @cluster_interfaces ct original ip daddr != @cluster_v4 return": (
        _SHORTCUT.format(node="node_v4")
        + "test_rules_per_packet's baseline catches that (forward: 5 rules where it allows "
        "3, 'off-link client->port published to the node'; shown by hand with "
        "bench/mutant_cli.py as its generator)"
    ),
    "delete forward_guard_new_v6[2]: ip6 daddr . oifname @node_v6 oifname @cluster_interfaces ct original ip6 daddr != @cluster_v6 return": (
        _SHORTCUT.format(node="node_v6") + "No rules-per-packet row has IPv6 node traffic"
    ),
}


def _datagrams(client: str, f: Fam, dst: str, port: int) -> Callable[[Lab], Outcome]:
    """Three datagrams from `client` to dst:port; delivered when the docker0 container's
    counter of them grew (multinode.STALE_RX: the published UDP port's destination)."""
    ctr = DOCKER0.role

    def count(lab: Lab) -> int:
        out = lab[ctr].exec(
            "nft", "-j", "list", "counter", "inet", multinode.STALE_RX, f"stale_v{f.v}"
        )
        return int(json.loads(out.stdout)["nftables"][1]["counter"]["packets"])

    def send() -> None:
        with socket.socket(
            socket.AF_INET6 if f.v == 6 else socket.AF_INET, socket.SOCK_DGRAM
        ) as sock:
            for _ in range(3):
                sock.sendto(b"stale", (dst, port))

    def probe(lab: Lab) -> Outcome:
        before = count(lab)
        lab[client].call(send)
        time.sleep(0.3)
        got = count(lab) - before
        return Outcome(got > 0, f"{got} of 3 datagrams delivered", ctr if got else None)

    return probe


def cluster_works(s: Scenario) -> bool:
    return s.effective or s.lan


def probes(c: Cluster) -> list[Probe]:
    n1, n2, other = c.node(1), c.node(2), c.nodes["other"]
    gw = dict(zip((4, 6), c.kind_network.gateways, strict=True))
    (other_gw,) = c.networks["other"].gateways
    m = multinode

    def works(ident: str, peer: str | None = None) -> Callable[[Scenario], Expect]:
        return lambda s: ok_if(cluster_works(s), ident, peer=peer)

    def as_mullvad(ident: str) -> Callable[[Scenario], Expect]:
        """Open only by Mullvad's LAN sharing, as without our table."""
        return lambda s: ok_if(s.lan, ident)

    cluster = [
        Probe(
            "host_node",
            V4,
            "host",
            "kubectl: the machine -> node1's API server on the kind bridge",
            _tcp("host", n1.ip4, API_PORT),
            works("node1"),
        ),
        Probe(
            "host_published",
            V4,
            "host",
            "kubectl: the machine -> 127.0.0.1:<port> published to node1's API server",
            _tcp("host", "127.0.0.1", m.KUBECTL_PORT),
            works("node1"),
        ),
        Probe(
            "host_node",
            V6,
            "host",
            "the machine -> node1's API server over IPv6",
            _tcp("host", n1.ip6, API_PORT),
            works("node1", gw[6]),
        ),
        Probe(
            "host_published",
            V6,
            "host",
            "the machine -> its own LAN address's port published to node1 (all addresses), "
            "over IPv6 (the CNI portmap plugin masquerades it: node1 sees the gateway)",
            _tcp("host", V6.host_lan, m.PUBLISHED_PORT),
            works("node1"),
        ),
        Probe(
            "node_node_api",
            V4,
            "node2",
            "a worker joins: node2 -> node1:6443, bridged; node1 sees node2's address",
            _tcp("node2", n1.ip4, API_PORT),
            works("node1", n2.ip4),
        ),
        Probe(
            "node_node_kubelet",
            V4,
            "node1",
            "the control plane -> node2's kubelet :10250, bridged",
            _tcp("node1", n2.ip4, KUBELET_PORT),
            works("node2", n1.ip4),
        ),
        Probe(
            "pod_pod",
            V4,
            "pod2",
            "pod on node2 -> pod on node1 (kindnet: node1's pod range via node1), bridged",
            _tcp("pod2", m.pod_addr(1, 4), POD_PORT),
            works("pod1", m.pod_addr(2, 4)),
        ),
        Probe(
            "pod_pod_vxlan",
            V4,
            "pod2",
            "pod on node2 -> pod on node1 by flannel's VXLAN (UDP 8472 between the nodes)",
            _tcp("pod2", m.flannel_addr(1), POD_PORT, src=m.flannel_addr(2)),
            works("pod1", m.flannel_addr(2)),
        ),
        Probe(
            "node_node_api",
            V6,
            "node2",
            "node2 -> node1:6443 over IPv6 (the kind network's ULA), bridged",
            _tcp("node2", n1.ip6, API_PORT),
            works("node1", n2.ip6),
        ),
        Probe(
            "pod_pod",
            V6,
            "pod2",
            "pod on node2 -> pod on node1 over IPv6 (kindnet's route via node1's ULA)",
            _tcp("pod2", m.pod_addr(1, 6), POD_PORT),
            works("pod1", m.pod_addr(2, 6)),
        ),
        *(
            Probe(
                f"node_gateway_dns_{proto}",
                f,
                "node1",
                "node1 -> its network's gateway :53 (Podman's aardvark-dns)",
                _dns("node1", gw[f.v], proto),
                works("aardvark"),
            )
            for f in (V4, V6)
            for proto in ("udp", "tcp")
        ),
    ]
    stays = [
        *(
            Probe(
                f"node_outside_dns_{proto}",
                V4,
                "node1",
                "node1 -> an outside resolver: rejected, neither LAN nor tunnel",
                _dns("node1", V4.outside_dns_pod, proto),
                lambda s: Expect(False, path="nowhere"),
                "node_dns",
            )
            for proto in ("udp", "tcp")
        ),
        Probe(
            "node_inet",
            V4,
            "node1",
            "node1 -> the internet: through the tunnel only",
            _tcp("node1", V4.internet, INET_POD),
            lambda s: Expect(True, "vpn", "tunnel"),
            "node_inet",
        ),
        Probe(
            "node_tunnel_dns",
            V4,
            "node1",
            "node1 -> Mullvad's in-tunnel resolver: works",
            _dns("node1", V4.tun_gw, "udp"),
            lambda s: Expect(True, "tunnel"),
        ),
        Probe(
            "node_other_gateway_dns",
            V4,
            "node1",
            "node1 -> the other network's gateway :53: not its own network's",
            _dns("node1", other_gw, "udp"),
            as_mullvad("aardvark"),
        ),
        Probe(
            "node_other",
            V4,
            "node1",
            "node1 -> a container on the other network (routed between two br-* bridges)",
            _tcp("node1", other.ip4, API_PORT),
            as_mullvad("other"),
        ),
        Probe(
            "other_node",
            V4,
            "other",
            "a container on the other network -> node1 (routed between two br-* bridges)",
            _tcp("other", n1.ip4, API_PORT),
            as_mullvad("node1"),
        ),
        Probe(
            "pod_cni",
            V4,
            "client",
            "a pod -> another pod on cni0 (bridged on a bridge that is no node network's; "
            "no POD_CIDRS here)",
            _tcp("client", V4.web_pod, WEB_PORT),
            as_mullvad("web"),
        ),
        *(
            Probe(
                "host_stale",
                f,
                "host",
                "the machine -> its LAN address's port published to a container on docker0 "
                "whose address lies in the node network's range: not the node network's bridge",
                _tcp("host", f.host_lan, m.STALE_PORT),
                as_mullvad("docker"),
            )
            for f in (V4, V6)
        ),
        *(
            Probe(
                "lan_stale",
                f,
                "lanclient",
                "a LAN client -> that port: not the node network's bridge",
                _tcp("lanclient", f.host_lan, m.STALE_PORT),
                as_mullvad("docker"),
            )
            for f in (V4, V6)
        ),
        *(
            Probe(
                "lan_stale_udp",
                f,
                "lanclient",
                "a LAN client's datagrams to that port (UDP): counted at the container, "
                "since a one-way packet is what it takes to reach it",
                _datagrams("lanclient", f, f.host_lan, m.STALE_PORT),
                as_mullvad("docker"),
            )
            for f in (V4, V6)
        ),
        Probe(
            "lan_node",
            V4,
            "lanclient",
            "a LAN client -> node1's unpublished kubelet port",
            _tcp("lanclient", n1.ip4, KUBELET_PORT),
            as_mullvad("node1"),
        ),
        Probe(
            "remote_node",
            V4,
            "lan",
            "an off-link client -> node1's unpublished kubelet port: blocked, no reply on "
            "the LAN (with LAN sharing, Mullvad lets it in and routes the reply into the "
            "tunnel)",
            _tcp("lan", n1.ip4, KUBELET_PORT, src=V4.remote),
            lambda s: Expect(False, path="tunnel" if s.lan else "nowhere"),
            "remote_node",
        ),
        Probe(
            "node_sshd_gateway",
            V4,
            "node1",
            "node1 -> the machine's sshd on the gateway address",
            _tcp("node1", gw[4], HOST_SERVICE_PORT),
            as_mullvad("host"),
        ),
        Probe(
            "node_sshd_lan",
            V4,
            "node1",
            "node1 -> the machine's sshd on its LAN address",
            _tcp("node1", V4.host_lan, HOST_SERVICE_PORT),
            as_mullvad("host"),
        ),
    ]
    return cluster + stays


def leaky_ruleset() -> str:
    """What a hurried user might write to make the nodes work: whatever arrives on a
    kind-like bridge, and whatever goes to the node network, exempted (both marks)."""
    mark = f"ct mark set {mullvad_emu.CT_MARK} meta mark set {mullvad_emu.FWMARK}"
    v4, v6 = multinode.SUBNET, kind.ULA_SUBNET
    return (
        f"table inet {LEAKY_TABLE} {{\n"
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority -90; policy accept;\n"
        f'\t\tiifname "br-*" {mark}\n\t\tip daddr {v4} {mark}\n\t\tip6 daddr {v6} {mark}\n\t}}\n'
        "\tchain output {\n\t\ttype route hook output priority -90; policy accept;\n"
        f"\t\tip daddr {v4} {mark}\n\t\tip6 daddr {v6} {mark}\n\t}}\n"
        "}\n"
    )


@dataclass
class Cell:
    scenario: Scenario
    settings: dict[str, str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    loader: str = ""

    def problems(self, probes: list[Probe]) -> dict[str, list[str]]:
        found = {
            p.id: check(p, self.outcomes[p.id], self.counters, p.expect(self.scenario))
            for p in probes
        }
        return {pid: problems for pid, problems in found.items() if problems}


@dataclass
class NodeMutation:
    """The node table's mutants tried in the lab's MUTATION_CELLS in turn (`cell`)."""

    reference: str = ""  # the main lab's table (bench/mutation.py sweeps its mutants)
    keys: list[str] = field(default_factory=list)  # every mutant, in order
    killed: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # cell, probes
    noise: dict[str, list[str]] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def survivors(self) -> list[str]:
        return [k for k in self.keys if k not in self.killed]

    def cell(self, lab: Lab, name: str, cell: Cell, found: list[Probe]) -> None:
        """In the cell's state, with our table loaded by `apply`: the mutants of the table
        it wrote (OUTPUT) that no earlier cell killed, against the probes."""
        start = time.monotonic()
        host = lab["host"]
        if not self.reference:  # the settings of the main lab (scenarios.settings_text)
            self.reference = run_generator(lab, "generate").stdout
        table = (lab.tmp / "mullvad-allow-k8s.nft").read_text()
        removals = [NODE_BRIDGE_OUT] if "CLUSTER_INTERFACES" in cell.settings else []
        todo, stale = mutation.node_mutants(table, self.reference, removals)
        self.stale += [f"{name}: {what}" for what in stale]
        self.keys += [m.key for m in todo if m.key not in self.keys]
        todo = [m for m in todo if m.key not in self.killed]

        def load(text: str) -> None:
            host.nft(text)
            flush_conntrack(host)  # no flow of an earlier table rides on its marks

        def run(probes: Sequence[Probe], expect: bool = False) -> dict[str, mutation.Seen]:
            for role in ("vpn", "lan"):
                lab[role].exec("nft", "reset", "counters", "table", "inet", TABLE)
            outcomes = run_probes(lab, list(probes))
            time.sleep(0.05)  # the last in-flight packets reach the counters
            counters = lab.counters(TABLE)
            for p in probes if expect else ():
                if bad := check(p, outcomes[p.id], counters, p.expect(cell.scenario)):
                    self.problems.append(f"{name}: unmutated table: {p.id}: {'; '.join(bad)}")
            return {
                p.id: mutation.Seen(mutation.signature(p, outcomes[p.id], counters), outcomes[p.id])
                for p in probes
            }

        # Our table's outcomes: the cell's own run (loaded by `apply`), and once more
        # as the mutants are loaded (the file it wrote, by nft) and with their timeout.
        seen = cell.outcomes
        base = {
            p.id: mutation.Seen(mutation.signature(p, seen[p.id], cell.counters), seen[p.id])
            for p in found
        }
        with probes_timeout(MUTANT_TIMEOUT):
            load(table)
            twice = run(found, expect=True)
            unstable = {pid for pid in base if base[pid].sig != twice[pid].sig}
            stable = [p for p in found if p.id not in unstable]
            judged = mutation.try_mutants(
                table, todo, stable, base, load=load, run=run, pair_families=True
            )
            after = run(found, expect=True)
        for key, (killers, noise) in judged.items():
            self.noise[key] = self.noise.get(key, []) + noise
            if killers:
                self.killed[key] = (name, killers)
        drift = {pid for pid in after if after[pid].sig != base[pid].sig} - unstable
        if unstable or drift:
            self.problems.append(
                f"{name}: unstable without mutation (left out): {sorted(unstable)}; "
                f"changed after the mutants: {sorted(drift)}"
            )
        self.seconds[name] = time.monotonic() - start

    def report(self) -> str:
        lines = []
        for key in self.keys:
            if key in self.killed:
                cell, killers = self.killed[key]
                lines.append(f"killed    {key}\n          in {cell} by {', '.join(killers)}")
            else:
                lines.append(f"SURVIVES  {key}")
            if self.noise.get(key):
                lines.append(f"          (changed once, not on the re-run: {self.noise[key]})")
        times = ", ".join(f"{c} {t:.1f} s" for c, t in self.seconds.items())
        lines.append(f"{len(self.killed)} of {len(self.keys)} mutants killed; {times}")
        return "\n".join(lines)


@dataclass
class Run:
    cluster: Cluster
    probes: list[Probe]
    cells: dict[str, Cell]
    seconds: float
    mutation: NodeMutation
    # "alone"/"ours" -> counter -> (packets into the tunnel, onto the LAN); stale_gone
    stale_gone: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


# Not local: DNAT-ed in nat OUTPUT to multinode.STALE (as kube-proxy does an externalIP
# or LoadBalancer IP whose endpoint is a node address). A local address's published port
# (Docker's) is no test of ours: routed by lo before DNAT, Mullvad's `oif lo accept` lets
# its first packet out with or without our table.
REMOTE = {4: "198.51.100.99", 6: "2001:db8:ffff::99"}


def stale_gone(lab: Lab, ours: bool) -> dict[str, tuple[int, int]]:
    """Mullvad blocked (LAN sharing off; our table applied before, while connected, if
    `ours`), the node address STALE routed by the LAN (its network gone, or the range
    given too wide): the machine connects to REMOTE:STALE_PORT, DNAT-ed to STALE (TCP),
    and sends 3 datagrams there (UDP). Counted on the LAN link and in the tunnel (STALE
    as destination), after a barrier. Mullvad alone sends nothing there."""
    host, m = lab["host"], multinode
    host.nft(OUR_TABLE + f"table inet {LEAKY_TABLE}\ndelete table inet {LEAKY_TABLE}\n")
    if ours:
        lab.set_mullvad(LAN_OFF)
        run_generator(lab, "apply", **SETTINGS)
    lab.set_mullvad(BLOCKED)
    fams = (V4, V6)
    dnat = "".join(
        f"\t\t{f.nfproto} daddr {REMOTE[f.v]} {proto} dport {m.STALE_PORT} "
        f"dnat {f.nfproto} to {'[' + m.STALE[6] + ']' if f.v == 6 else m.STALE[4]}:{port}\n"
        for f in fams
        for proto, port in (("tcp", WEB_PORT), ("udp", m.STALE_UDP_PORT))
    )
    host.nft(
        "table inet netlab_remote {\n\tchain out {\n"
        f"\t\ttype nat hook output priority -100;\n{dnat}\t}}\n}}\n"
    )
    host.ip("".join(f"route replace {m.STALE[f.v]} via {f.router} dev eth0\n" for f in fams))
    try:
        flush_conntrack(host)
        for role in ("vpn", "lan"):
            lab[role].exec("nft", "reset", "counters", "table", "inet", STALE_OUT)
        for f in fams:

            def send(f: Fam = f) -> None:
                family = socket.AF_INET6 if f.v == 6 else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    for _ in range(3):
                        with contextlib.suppress(OSError):  # EPERM: Mullvad's reject
                            sock.sendto(b"stale", (REMOTE[f.v], m.STALE_PORT))

            with probes_timeout(0.5):  # the first SYN only, no retransmission
                host.call(lambda f=f: tcp_connect(REMOTE[f.v], m.STALE_PORT))
            host.call(send)
        lab.barrier()
        tun, lan = read_counters(lab["vpn"], STALE_OUT), read_counters(lab["lan"], STALE_OUT)
        return {name: (tun[name], lan[name]) for name in tun}
    finally:
        host.nft("delete table inet netlab_remote\n")
        host.ip(
            "".join(
                f"route replace {m.STALE[v]} via {DOCKER0.ctr[v]} dev {DOCKER0.name}\n"
                for v in (4, 6)
            )
        )


def switch(lab: Lab, cell: Cell) -> str:
    """Put the lab into the cell's state; what the loader printed."""
    host, scn = lab["host"], cell.scenario
    lab.set_mullvad(scn.mullvad)
    host.nft(OUR_TABLE + f"table inet {LEAKY_TABLE}\ndelete table inet {LEAKY_TABLE}\n")
    loader = ""
    if scn.bypass == "generated":
        proc = run_generator(lab, "apply", **SETTINGS, **cell.settings)
        loader = proc.stdout + proc.stderr
    elif scn.bypass == "leaky":
        host.nft(leaky_ruleset())
    flush_conntrack(host)  # the earlier cells' flows, and their marks, forgotten
    for role in ("vpn", "lan"):
        lab[role].exec("nft", "reset", "counters", "table", "inet", TABLE)
    return loader


def run_cells() -> Run:
    start = time.monotonic()
    lab = Lab(LAN_OFF, container_node=False)  # the real Podman makes kind's network
    cluster = Cluster(lab)
    cells = {name: Cell(scn, settings) for name, (scn, settings) in CELLS.items()}
    mutants = NodeMutation()
    try:
        lab.build()
        stale_out = {
            f"stale_{proto}_v{f.v}": f"{f.nfproto} daddr {multinode.STALE[f.v]} {proto} dport {port}"
            for f in (V4, V6)
            for proto, port in (("tcp", WEB_PORT), ("udp", multinode.STALE_UDP_PORT))
        }
        for role, ifname in (("vpn", "tun0"), ("lan", "lanbr")):
            lab[role].nft(counter_rules(ifname, WATCHES, TABLE))
            lab[role].nft(
                named_counters(
                    STALE_OUT,
                    "type filter hook prerouting priority -400; policy accept;",
                    {k: f'iifname "{ifname}" {v}' for k, v in stale_out.items()},
                )
            )
        cluster.build()
        for role in ("lanclient", "lan"):
            lab[role].ip(f"route add {multinode.SUBNET} via {V4.host_lan}\n")
        found = probes(cluster)
        for name, cell in cells.items():
            cell.loader = switch(lab, cell)
            cell.outcomes = run_probes(lab, found)
            time.sleep(0.05)  # the last in-flight packets reach the counters
            cell.counters = lab.counters(TABLE)
            if name in MUTATION_CELLS:
                mutants.cell(lab, name, cell, found)
        gone = time.monotonic()
        stale = {"alone": stale_gone(lab, ours=False), "ours": stale_gone(lab, ours=True)}
        print(f"stale_gone: {stale}, {time.monotonic() - gone:.1f} s")
    finally:
        errors = cluster.destroy()
        errors += lab.destroy()
        if errors:
            raise LabError(f"cleanup of {lab.uid} failed: {errors}")
    return Run(cluster, found, cells, time.monotonic() - start, mutants, stale)


@pytest.fixture(scope="module")
def result() -> Iterator[Run]:
    if PODMAN_MISSING:
        pytest.skip(PODMAN_MISSING)
    yield run_cells()


def test_podman_made_the_networks(result: Run) -> None:
    nets = result.cluster.networks
    assert nets["kind"].bridge.startswith("br-") and nets["other"].bridge.startswith("br-")
    assert nets["kind"].subnets == (multinode.SUBNET, kind.ULA_SUBNET)
    nodes = result.cluster.nodes
    assert [n.ip4 for n in nodes.values()] == ["172.18.0.2", "172.18.0.3", "172.20.0.2"]


@pytest.mark.parametrize("cell", ["alone_lan_off", "alone_lan_on"])
def test_mullvad_alone(result: Run, cell: str) -> None:
    """The control: with LAN sharing off, Mullvad cuts the nodes off each other, their
    pods and their DNS; with it on, everything works (and the LAN reaches them)."""
    got = result.cells[cell]
    if cell == "alone_lan_off":
        for pid in CLUSTER:
            assert not got.outcomes[pid].ok, (pid, got.outcomes[pid])
    assert got.problems(result.probes) == {}


@pytest.mark.parametrize("cell", ["ours_lan_off", "ours_lan_on_cni"])
def test_our_table(result: Run, cell: str) -> None:
    got = result.cells[cell]
    failed = {pid: got.outcomes[pid].detail for pid in sorted(CLUSTER) if not got.outcomes[pid].ok}
    assert failed == {}, (failed, got.loader)
    assert got.problems(result.probes) == {}, (got.problems(result.probes), got.loader)


def test_the_probes_catch_a_leaky_table(result: Run) -> None:
    got = result.cells["leaky"]
    assert set(got.problems(result.probes)) == CAUGHT, got.problems(result.probes)


def test_every_node_rule_is_decided_by_traffic(result: Run) -> None:
    """Each mutant of the node table changes what some probe shows in a cell (the
    probes that killed it are printed, with -s), or is listed with the reason."""
    got = result.mutation
    print(got.report())
    assert got.keys, "no mutants: the node table has no rule the main lab's lacks"
    assert not got.stale, f"no longer in the node table: {got.stale}"
    assert not got.problems, got.problems
    survivors = set(got.survivors)
    new = sorted(survivors - set(NODE_SURVIVORS_WITH_REASON))
    killed = sorted(set(NODE_SURVIVORS_WITH_REASON) - survivors)
    assert not new, "mutants nothing kills, in no list:\n" + "\n".join(new)
    assert not killed, "now killed: remove from NODE_SURVIVORS_WITH_REASON:\n" + "\n".join(killed)


def test_stale_node_address_gone_blocked(result: Run) -> None:
    """Mullvad blocked, LAN sharing off, a node address routed by the LAN: the machine's
    connection to a non-local address DNAT-ed to it in nat OUTPUT (`stale_gone`) leaves neither by the LAN nor by the tunnel, with our table as with Mullvad alone
    (the control: 0 packets). Counted per protocol and family (tunnel, LAN)."""
    got = result.stale_gone
    assert set(got["alone"]) == {f"stale_{p}_v{v}" for p in ("tcp", "udp") for v in (4, 6)}
    assert got["alone"] == dict.fromkeys(got["alone"], (0, 0)), got
    assert got["ours"] == dict.fromkeys(got["alone"], (0, 0)), got
