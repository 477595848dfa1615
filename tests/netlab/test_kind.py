"""Clusters in containers and VMs beside Mullvad (LAN sharing off), with and without our
table: kind on Podman, and minikube's kvm2 driver.

The machine is the lab's host namespace, Mullvad connected with local network sharing
off. For kind, Podman itself makes the kind network and the node container (`kind.py`
says what is real and what is a stand-in): the API server published on
127.0.0.1:<random> as kind publishes it for kubectl, an `extraPortMappings` port 80 on
0.0.0.0, pods, kube-proxy's DNAT of the cluster DNS ClusterIP and CoreDNS inside the
node. Our table comes from the project's CLI with what a kind user sets: `PRESET=kind
NODE_NETWORKS=auto`, and KIND_EXPERIMENTAL_PODMAN_NETWORK naming the network, so that
detection (`podman network inspect`) finds it; the lab's own pod and service ranges and
host ports are left to the preset. For minikube-kvm2 (built by hand: no libvirt here),
`PRESET=minikube-kvm2 NODE_NETWORKS=192.168.39.0/24@virbr1`.

With the table, kubectl-style host -> API, the host -> node directly, and (kind) LAN
and off-link clients -> the mapped port work, replies by the LAN; without it (the
control) they fail. Either way, pod DNS inside the kind node works, the node's (and its
pods') own internet traffic leaves only through the tunnel, the node's DNS to an
outside resolver is rejected (0 packets on the LAN, none in the tunnel), the in-tunnel
resolver answers, and the machine's sshd stays unreachable from the node. A leaky
hand-written table for each shape (the node's networks exempted both ways) shows that
those probes fail when they should. The kind network is dual-stack, as kind makes it; kind publishes
ports on IPv4 addresses, so IPv6 is probed only host -> node (see kind_probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from . import kind, mullvad_emu
from .mullvad_emu import MullvadState
from .probes import Expect, Outcome, Probe, Scenario, _dns, _tcp, check, ok_if
from .scenarios import run_generator, run_probes
from .topology import HOST_SERVICE_PORT, INET_EXT_POD, INET_POD, V4, V6, Lab, counter_rules

PODMAN_MISSING = kind.unavailable()
MULLVAD = MullvadState("connected", allow_lan=False, split=True)
TABLE = "netlab_kind"
NODE_INET, POD_INET = INET_POD, INET_EXT_POD  # internet server ports, one per probe
WATCHES = {
    "mapped": "{ip} daddr {remote} tcp sport " + str(kind.MAPPED_PORT),
    "node_inet": "{ip} daddr {internet} tcp dport " + str(NODE_INET),
    "pod_inet": "{ip} daddr {internet} tcp dport " + str(POD_INET),
    "node_dns": "{ip} daddr {outside_dns_pod} meta l4proto {{ tcp, udp }} th dport 53",
}
Node = kind.KindNode | kind.MinikubeVm
SHAPES: dict[str, Callable[[Lab], Node]] = {"kind": kind.KindNode, "kvm2": kind.MinikubeVm}
# Probes that must fail without our table (the control) and work with it.
NEEDS_TABLE = {
    "kind": {"host_api_v4", "host_node_v4", "host_node_v6", "remote_mapped_v4", "lan_mapped_v4"},
    "kvm2": {"host_node_v4"},
}
# Probes that must catch the leaky tables below (the node's own traffic exempted): its
# internet traffic and outside DNS leave by the LAN, sshd answers it; kind: its in-tunnel
# DNS breaks (Mullvad's nat chain drops ct-marked flows leaving by the tunnel), and the
# mapped port answers through the tunnel (it marks whatever goes to the node), and its
# clients are seen as the bridge address (Mullvad's nat chain masquerades the ct-marked
# flows; our table keeps the client's address); kvm2: the
# VM's in-tunnel DNS still works (libvirt's masquerade), and the VM reaches sshd on all
# three addresses.
CAUGHT = {
    "kind": {
        "tunnel_mapped_v4",
        "remote_mapped_v4",
        "lan_mapped_v4",
        "node_inet_v4",
        "pod_inet_v4",
        "node_outside_dns_udp_v4",
        "node_outside_dns_tcp_v4",
        "node_tunnel_dns_v4",
        "node_host_service_gw_v4",
        "node_host_service_lan_v4",
    },
    "kvm2": {
        "node_inet_v4",
        "node_outside_dns_udp_v4",
        "node_outside_dns_tcp_v4",
        "node_host_service_gw_v4",
        "node_host_service_lan_v4",
        "node_host_service_nat_v4",
    },
}


def node_probes(node: Node) -> list[Probe]:
    """What every node shape is checked for: the host reaches it with the table, and its
    own traffic is treated as without the table."""
    vm = node.role
    return [
        Probe(
            "host_node",
            V4,
            "host",
            "the host -> the node's address on its bridge (the API server)",
            _tcp("host", node.node_ip, node.api_port),
            lambda s: ok_if(s.effective, node.api_ident),
        ),
        Probe(
            "node_inet",
            V4,
            vm,
            "the node's own connection to the internet leaves only through the tunnel",
            _tcp(vm, V4.internet, NODE_INET),
            lambda s: Expect(True, "vpn", "tunnel"),
            "node_inet",
        ),
        *(
            Probe(
                f"node_outside_dns_{proto}",
                V4,
                vm,
                "the node's DNS to an outside resolver is rejected: neither LAN nor tunnel",
                _dns(vm, V4.outside_dns_pod, proto),
                lambda s: Expect(False, path="nowhere"),
                "node_dns",
            )
            for proto in ("udp", "tcp")
        ),
        Probe(
            "node_tunnel_dns",
            V4,
            vm,
            "the node's DNS to Mullvad's in-tunnel resolver works",
            _dns(vm, V4.tun_gw, "udp"),
            lambda s: Expect(True, "tunnel"),
        ),
        Probe(
            "node_host_service_gw",
            V4,
            vm,
            "the node -> the machine's sshd on the bridge address: as without the table",
            _tcp(vm, node.gateway, HOST_SERVICE_PORT),
            lambda s: Expect(False),
        ),
        Probe(
            "node_host_service_lan",
            V4,
            vm,
            "the node -> the machine's sshd on its LAN address: as without the table",
            _tcp(vm, V4.host_lan, HOST_SERVICE_PORT),
            lambda s: Expect(False),
        ),
    ]


def kind_probes(node: kind.KindNode) -> list[Probe]:
    """kind's published ports, the node's IPv6 address, and the pods inside the node."""
    return [
        # The host solicits the node (Mullvad's output passes neighbour solicitations to
        # solicited-node multicast), so the node learns the host's link-layer address
        # from it and can answer. The node's own IPv6 traffic is not probed: its first
        # solicitation of its gateway comes from its ULA address, which Mullvad's input
        # chain drops (only fe80::/10 passes), with or without our table, so whether it
        # works depends on whether the host spoke to the node first (README).
        Probe(
            "host_node",
            V6,
            "host",
            "the host -> the node's IPv6 address on the podman bridge (the ULA subnet)",
            _tcp("host", node.node_ip6, node.api_port),
            lambda s: ok_if(s.effective, node.api_ident),
        ),
        Probe(
            "host_api",
            V4,
            "host",
            "kubectl: the host -> 127.0.0.1:<port>, podman's portmap DNAT (output) to node:6443",
            _tcp("host", "127.0.0.1", node.host_api_port),
            lambda s: ok_if(s.effective, node.api_ident),
        ),
        Probe(
            "remote_mapped",
            V4,
            "lan",
            "off-link client -> the LAN address:80 (extraPortMappings); replies by the LAN; "
            "the node sees the client (podman's portmap masquerades only hairpin, localhost)",
            _tcp("lan", V4.host_lan, kind.MAPPED_PORT, src=V4.remote),
            lambda s: ok_if(
                s.effective, "kind-ingress", "lan", else_path="nowhere", peer=V4.remote
            ),
            "mapped",
        ),
        Probe(
            "tunnel_mapped",
            V4,
            "vpn",
            "the mapped port through the tunnel (the tunnel's address:80): never exempted, "
            "as without the table",
            _tcp("vpn", V4.tun_host, kind.MAPPED_PORT),
            lambda s: Expect(False),
        ),
        Probe(
            "lan_mapped",
            V4,
            "lanclient",
            "on-link LAN client -> the machine's LAN address:80 (extraPortMappings); the "
            "node sees the client",
            _tcp("lanclient", V4.host_lan, kind.MAPPED_PORT),
            lambda s: ok_if(s.effective, "kind-ingress", peer=V4.lan_client),
        ),
        *(
            Probe(
                f"pod_cluster_dns_{proto}",
                V4,
                "kindclient",
                "a pod in the node -> the DNS ClusterIP, kube-proxy's DNAT in the node, CoreDNS",
                _dns("kindclient", kind.KUBE_DNS, proto),
                lambda s: Expect(True, "coredns"),
            )
            for proto in ("udp", "tcp")
        ),
        Probe(
            "pod_inet",
            V4,
            "kindclient",
            "a pod's connection to the internet (masqueraded by the node) only by the tunnel",
            _tcp("kindclient", V4.internet, POD_INET),
            lambda s: Expect(True, "vpn", "tunnel"),
            "pod_inet",
        ),
    ]


def vm_probes(vm: kind.MinikubeVm) -> list[Probe]:
    return [
        Probe(
            "node_host_service_nat",
            V4,
            vm.role,
            "the VM -> the machine's sshd on libvirt's NAT bridge: as without the table",
            _tcp(vm.role, vm.nat_gateway, HOST_SERVICE_PORT),
            lambda s: Expect(False),
        )
    ]


def leaky_ruleset(node: Node) -> str:
    """What a hurried user might write: everything to or from the node's networks
    exempted (after DNAT, so 127.0.0.1:<port> and the mapped port are covered too; for
    kvm2 both libvirt networks, as exempting its `virbr*` bridges would). It makes the
    cluster work, and lets the node's own traffic out by the LAN, its DNS to any
    resolver, and the node into the machine's sshd; the in-tunnel resolver breaks."""
    mark = f"ct mark set {mullvad_emu.CT_MARK} meta mark set {mullvad_emu.FWMARK}"
    nets = node.subnets if isinstance(node, kind.KindNode) else (*node.subnets, node.nat_subnet)
    ip = {net: "ip6" if ":" in net else "ip" for net in nets}
    pre = "".join(f"\t\t{ip[n]} saddr {n} {mark}\n\t\t{ip[n]} daddr {n} {mark}\n" for n in ip)
    out = "".join(f"\t\t{ip[n]} daddr {n} {mark}\n" for n in ip)
    return (
        "table inet netlab_leaky_nodes {\n"
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority -90; policy accept;\n"
        f"{pre}\t}}\n"
        "\tchain output {\n\t\ttype route hook output priority -90; policy accept;\n"
        f"{out}\t}}\n"
        "}\n"
    )


@dataclass
class NodeResult:
    scenario: Scenario
    node: Node
    probes: list[Probe] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    root_leaks: list[str] = field(default_factory=list)
    lab_bridge: str = ""
    lab_ruleset: str = ""
    loader: str = ""
    detected: str = ""
    seconds: float = 0.0

    def problems(self) -> dict[str, list[str]]:
        """Probe id -> what differs from the scenario's expectation (only the failing)."""
        found = {
            p.id: check(p, self.outcomes[p.id], self.counters, p.expect(self.scenario))
            for p in self.probes
        }
        return {pid: problems for pid, problems in found.items() if problems}


def run_shape(shape: str, bypass: str) -> NodeResult:
    """Build the lab and the node, load our table (or not), probe, clean up."""
    start = time.monotonic()
    scenario = Scenario(MULLVAD, bypass)
    lab = Lab(MULLVAD, container_node=False)  # the real Podman makes kind's network
    node = SHAPES[shape](lab)
    result = NodeResult(scenario, node)
    root_before = kind.root_namespace_state()
    try:
        lab.build()
        lab["vpn"].nft(counter_rules("tun0", WATCHES, TABLE))
        lab["lan"].nft(counter_rules("lanbr", WATCHES, TABLE))
        node.build()
        if isinstance(node, kind.KindNode):
            result.root_leaks = kind.root_namespace_changes(root_before, node)
        result.lab_bridge = lab["host"].exec("ip", "-br", "addr", "show", node.bridge).stdout
        result.lab_ruleset = lab["host"].exec("nft", "list", "ruleset").stdout
        if bypass == "generated":
            env, settings = node.generator()
            wrap = node.root_view()
            proc = run_generator(lab, "apply", env=env, wrap=wrap, **settings)
            result.loader = proc.stdout + proc.stderr
            result.detected = run_generator(lab, "settings", env=env, wrap=wrap, **settings).stdout
        elif bypass == "leaky":
            lab["host"].nft(leaky_ruleset(node))
        result.probes = node_probes(node)
        if isinstance(node, kind.KindNode):
            result.probes += kind_probes(node)
        else:
            result.probes += vm_probes(node)
        result.outcomes = run_probes(lab, result.probes)
        lab.barrier(hops=4)  # the last in-flight packets reach the counters
        result.counters = lab.counters(TABLE)
    finally:
        errors = node.destroy()
        errors += lab.destroy()
        assert not errors, f"cleanup of {lab.uid} failed: {errors}"
    result.seconds = time.monotonic() - start
    return result


@pytest.fixture(scope="module")
def results() -> Iterator[Callable[[str, str], NodeResult]]:
    """(shape, bypass) -> its result, each built once per module."""
    cache: dict[tuple[str, str], NodeResult] = {}

    def get(shape: str, bypass: str) -> NodeResult:
        if shape == "kind" and PODMAN_MISSING:
            pytest.skip(PODMAN_MISSING)
        if (shape, bypass) not in cache:
            cache[shape, bypass] = run_shape(shape, bypass)
        return cache[shape, bypass]

    yield get


def test_podman_builds_the_network_inside_the_lab_machine(
    results: Callable[[str, str], NodeResult],
) -> None:
    res = results("kind", "none")
    node = res.node
    assert isinstance(node, kind.KindNode)
    assert node.bridge.startswith("cni-podman"), node.bridge
    assert kind.ULA_SUBNET in node.subnets and len(node.subnets) == 2, node.subnets
    assert node.bridge in res.lab_bridge and f"{node.gateway}/" in res.lab_bridge
    # podman's portmap DNATs, in the lab machine and not in the namespace we run in
    assert f"dnat to {node.node_ip}:{kind.NODE_API_PORT}" in res.lab_ruleset
    assert f"dnat to {node.node_ip}:{kind.NODE_WEB_PORT}" in res.lab_ruleset
    assert res.root_leaks == []


@pytest.mark.parametrize("shape", SHAPES)
def test_without_our_table_the_cluster_is_cut_off(
    results: Callable[[str, str], NodeResult], shape: str
) -> None:
    """The control: with LAN sharing off, Mullvad drops the host's and the clients' way
    to the node; the node's own traffic is as the other runs expect it."""
    res = results(shape, "none")
    for pid in NEEDS_TABLE[shape]:
        assert not res.outcomes[pid].ok, (pid, res.outcomes[pid])
    assert res.problems() == {}


@pytest.mark.parametrize("shape", SHAPES)
def test_with_our_table_the_cluster_works_and_leaks_nothing(
    results: Callable[[str, str], NodeResult], shape: str
) -> None:
    res = results(shape, "generated")
    if isinstance(res.node, kind.KindNode):  # found by detection
        assert f"podman network inspect {res.node.network}" in res.detected, res.detected
    for pid in NEEDS_TABLE[shape]:
        assert res.outcomes[pid].ok, (pid, res.outcomes[pid], res.loader)
    assert res.problems() == {}, (res.problems(), res.loader)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_probes_catch_a_leaky_table(
    results: Callable[[str, str], NodeResult], shape: str
) -> None:
    """The node-traffic probes are not vacuous: with the expectations of a correct
    table, they fail on one that exempts the node's own traffic (and the probes that
    need a table pass with it)."""
    res = results(shape, "leaky")
    assert set(res.problems()) == CAUGHT[shape], res.problems()
