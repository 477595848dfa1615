"""A kind cluster on Podman beside Mullvad (LAN sharing off), with and without our table.

The machine is the lab's host namespace, Mullvad connected with local network sharing
off. Podman itself makes the kind network and the node container in it (`kind.py` says
what is real and what is a stand-in): the API server published on 127.0.0.1:<random>
as kind publishes it for kubectl, an `extraPortMappings` port 80 on 0.0.0.0, pods,
kube-proxy's DNAT of the cluster DNS ClusterIP and CoreDNS inside the node. Our table
comes from the project's CLI with what a kind user sets: `PRESET=kind
NODE_NETWORKS=auto`, and KIND_EXPERIMENTAL_PODMAN_NETWORK naming the network, so that
detection (`podman network inspect`) finds it; the lab's own pod and service ranges
and host ports are left to the preset.

With the table, kubectl-style host -> API, the host -> node directly, and LAN and
off-link clients -> the mapped port work (replies by the LAN); without it (the control)
they fail. Either way, pod DNS inside the node works, the node's and its pods' own
internet traffic leaves only through the tunnel, the node's DNS to an outside resolver
is rejected (0 packets on the LAN, none in the tunnel), the in-tunnel resolver answers,
and the machine's sshd stays unreachable from the node. IPv4 only: the network is
dual-stack, as kind makes it, but kind publishes ports on IPv4 addresses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from . import kind, mullvad_emu
from .mullvad_emu import MullvadState
from .probes import Expect, Outcome, Probe, Scenario, check, dns_query, ok_if, tcp_connect
from .scenarios import run_generator, run_probes
from .topology import INET_EXT_POD, INET_POD, V4, Lab, counter_rules

REASON = kind.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

MULLVAD = MullvadState("connected", allow_lan=False, split=True)
TABLE = "netlab_kind"
NODE_INET, POD_INET = INET_POD, INET_EXT_POD  # internet server ports, one per probe
WATCHES = {
    "kind_mapped": "{ip} daddr {remote} tcp sport " + str(kind.MAPPED_PORT),
    "kind_node_inet": "{ip} daddr {internet} tcp dport " + str(NODE_INET),
    "kind_pod_inet": "{ip} daddr {internet} tcp dport " + str(POD_INET),
    "kind_node_dns": "{ip} daddr {outside_dns_pod} meta l4proto {{ tcp, udp }} th dport 53",
}
# Probes that must fail without our table (the control) and work with it.
NEEDS_TABLE = {
    "host_api_v4",
    "host_node_v4",
    "remote_mapped_v4",
    "lan_mapped_v4",
}
# Probes that must catch the leaky table below (the node's own traffic exempted): its
# internet traffic and outside DNS leave by the LAN, sshd answers it, and its in-tunnel
# DNS breaks (Mullvad's nat chain drops ct-marked flows that leave by the tunnel).
CAUGHT = {
    "node_inet_v4",
    "pod_inet_v4",
    "node_outside_dns_udp_v4",
    "node_outside_dns_tcp_v4",
    "node_tunnel_dns_v4",
    "node_host_service_gw_v4",
    "node_host_service_lan_v4",
}


def leaky_ruleset(node: kind.KindNode) -> str:
    """What a hurried kind user might write: everything to or from the node network
    exempted (after DNAT, so 127.0.0.1:<port> and the mapped port are covered too).
    It makes kind work, and lets the node's own traffic out by the LAN, its DNS to any
    resolver, and the node into the machine's sshd; the in-tunnel resolver breaks."""
    mark = f"ct mark set {mullvad_emu.CT_MARK} meta mark set {mullvad_emu.FWMARK}"
    net = next(s for s in node.subnets if "." in s)
    return (
        "table inet netlab_leaky_kind {\n"
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority -90; policy accept;\n"
        f"\t\tip saddr {net} {mark}\n\t\tip daddr {net} {mark}\n\t}}\n"
        "\tchain output {\n\t\ttype route hook output priority -90; policy accept;\n"
        f"\t\tip daddr {net} {mark}\n\t}}\n"
        "}\n"
    )


def kind_probes(node: kind.KindNode) -> list[Probe]:
    def probe(
        name: str,
        client: str,
        why: str,
        run: Callable[[Lab], Outcome],
        expect: Callable[[Scenario], Expect],
        *,
        watch: str | None = None,
    ) -> Probe:
        return Probe(name, V4, client, why, run, expect, watch)

    def tcp(client: str, dst: str, port: int, src: str | None = None) -> Callable[[Lab], Outcome]:
        return lambda lab: lab[client].call(lambda: tcp_connect(dst, port, src=src))

    def dns(client: str, server: str, proto: str) -> Callable[[Lab], Outcome]:
        return lambda lab: lab[client].call(lambda: dns_query(server, 53, proto))

    def table(s: Scenario) -> bool:
        return s.effective

    gateway = node.gateway
    return [
        probe(
            "host_api",
            "host",
            "kubectl: the host -> 127.0.0.1:<port>, podman's portmap DNAT (output) to node:6443",
            tcp("host", "127.0.0.1", node.api_port),
            lambda s: ok_if(table(s), "kind-apiserver"),
        ),
        probe(
            "host_node",
            "host",
            "the host -> the node's address on the podman bridge (API server :6443)",
            tcp("host", node.node_ip, kind.NODE_API_PORT),
            lambda s: ok_if(table(s), "kind-apiserver"),
        ),
        probe(
            "remote_mapped",
            "lan",
            "off-link client -> the LAN address:80 (extraPortMappings); replies by the LAN",
            tcp("lan", V4.host_lan, kind.MAPPED_PORT, src=V4.remote),
            lambda s: ok_if(table(s), "kind-ingress", "lan", else_path="nowhere"),
            watch="kind_mapped",
        ),
        probe(
            "lan_mapped",
            "lanclient",
            "on-link LAN client -> the machine's LAN address:80 (extraPortMappings)",
            tcp("lanclient", V4.host_lan, kind.MAPPED_PORT),
            lambda s: ok_if(table(s), "kind-ingress"),
        ),
        *(
            probe(
                f"pod_cluster_dns_{proto}",
                "kindclient",
                "a pod in the node -> the DNS ClusterIP, kube-proxy's DNAT in the node, CoreDNS",
                dns("kindclient", kind.KUBE_DNS, proto),
                lambda s: Expect(True, "coredns"),
            )
            for proto in ("udp", "tcp")
        ),
        probe(
            "node_inet",
            "kindnode",
            "the node's own connection to the internet leaves only through the tunnel",
            tcp("kindnode", V4.internet, NODE_INET),
            lambda s: Expect(True, "vpn", "tunnel"),
            watch="kind_node_inet",
        ),
        probe(
            "pod_inet",
            "kindclient",
            "a pod's connection to the internet (masqueraded by the node) only by the tunnel",
            tcp("kindclient", V4.internet, POD_INET),
            lambda s: Expect(True, "vpn", "tunnel"),
            watch="kind_pod_inet",
        ),
        *(
            probe(
                f"node_outside_dns_{proto}",
                "kindnode",
                "the node's DNS to an outside resolver is rejected: neither LAN nor tunnel",
                dns("kindnode", V4.outside_dns_pod, proto),
                lambda s: Expect(False, path="nowhere"),
                watch="kind_node_dns",
            )
            for proto in ("udp", "tcp")
        ),
        probe(
            "node_tunnel_dns",
            "kindnode",
            "the node's DNS to Mullvad's in-tunnel resolver works",
            dns("kindnode", V4.tun_gw, "udp"),
            lambda s: Expect(True, "tunnel"),
        ),
        probe(
            "node_host_service_gw",
            "kindnode",
            "the node -> the machine's sshd on the bridge address: as without the table",
            tcp("kindnode", gateway, 22),
            lambda s: Expect(False),
        ),
        probe(
            "node_host_service_lan",
            "kindnode",
            "the node -> the machine's sshd on its LAN address: as without the table",
            tcp("kindnode", V4.host_lan, 22),
            lambda s: Expect(False),
        ),
    ]


@dataclass
class KindResult:
    scenario: Scenario
    node: kind.KindNode
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
        return {
            p.id: check(p, self.outcomes[p.id], self.counters, p.expect(self.scenario))
            for p in self.probes
        }


def run_kind(bypass: str) -> KindResult:
    """Build the lab and the kind node, load our table (or not), probe, clean up."""
    start = time.monotonic()
    scenario = Scenario(MULLVAD, bypass)
    lab = Lab(MULLVAD)
    node = kind.KindNode(lab)
    result = KindResult(scenario, node)
    root_before = kind.root_namespace_state()
    try:
        lab.build()
        lab["vpn"].nft(counter_rules("tun0", WATCHES, TABLE))
        lab["lan"].nft(counter_rules("lanbr", WATCHES, TABLE))
        node.build()
        result.root_leaks = kind.root_namespace_changes(root_before, node)
        result.lab_bridge = lab["host"].exec("ip", "-br", "addr", "show", node.bridge).stdout
        result.lab_ruleset = lab["host"].exec("nft", "list", "ruleset").stdout
        if bypass == "generated":
            env = {"KIND_EXPERIMENTAL_PODMAN_NETWORK": node.network, **node.env}
            settings = {
                "PRESET": "kind",
                "NODE_NETWORKS": "auto",
                "POD_CIDRS": "",
                "SERVICE_CIDRS": "",
                "HOST_PORTS": "",
            }
            proc = run_generator(lab, "apply", env=env, **settings)
            result.loader = proc.stdout + proc.stderr
            result.detected = run_generator(lab, "settings", env=env, **settings).stdout
        elif bypass == "leaky":
            lab["host"].nft(leaky_ruleset(node))
        result.probes = kind_probes(node)
        result.outcomes = run_probes(lab, result.probes)
        time.sleep(0.05)  # the last in-flight packets reach the counters
        result.counters = lab.counters(TABLE)
    finally:
        errors = node.destroy()
        errors += lab.destroy()
        assert not errors, f"cleanup of {lab.uid} / {node.network} failed: {errors}"
    result.seconds = time.monotonic() - start
    return result


@pytest.fixture(scope="module")
def with_table() -> Iterator[KindResult]:
    yield run_kind("generated")


@pytest.fixture(scope="module")
def without_table() -> Iterator[KindResult]:
    yield run_kind("none")


@pytest.fixture(scope="module")
def leaky_table() -> Iterator[KindResult]:
    yield run_kind("leaky")


def test_podman_builds_the_network_inside_the_lab_machine(without_table: KindResult) -> None:
    res, node = without_table, without_table.node
    assert node.bridge.startswith("cni-podman"), node.bridge
    assert kind.ULA_SUBNET in node.subnets and len(node.subnets) == 2, node.subnets
    assert node.bridge in res.lab_bridge and f"{node.gateway}/" in res.lab_bridge
    # podman's portmap DNATs and the bridge plugin's masquerade, in the lab machine
    assert f"dnat to {node.node_ip}:{kind.NODE_API_PORT}" in res.lab_ruleset
    assert f"dnat to {node.node_ip}:{kind.NODE_WEB_PORT}" in res.lab_ruleset
    assert res.root_leaks == []


def test_without_our_table_kind_is_cut_off(without_table: KindResult) -> None:
    """The control: LAN sharing off, Mullvad drops the host's and the clients' way in."""
    res = without_table
    for pid in NEEDS_TABLE:
        assert not res.outcomes[pid].ok, (pid, res.outcomes[pid])
    problems = {pid: p for pid, p in res.problems().items() if p}
    assert problems == {}


def test_with_our_table_kind_works_and_leaks_nothing(with_table: KindResult) -> None:
    res = with_table
    assert f"podman network inspect {res.node.network}" in res.detected, res.detected
    for pid in NEEDS_TABLE:
        assert res.outcomes[pid].ok, (pid, res.outcomes[pid], res.loader)
    problems = {pid: p for pid, p in res.problems().items() if p}
    assert problems == {}, (problems, res.loader)


def test_the_probes_catch_a_leaky_kind_table(leaky_table: KindResult) -> None:
    """The leak probes are not vacuous: with the expectations of a correct table, they
    fail on one that exempts the node's own traffic (and the probes that need a table
    pass with it)."""
    res = leaky_table
    problems = {pid: p for pid, p in res.problems().items() if p}
    assert set(problems) == CAUGHT, problems
