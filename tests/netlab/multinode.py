"""A multi-node container cluster on the lab's machine (issue 23): two kind nodes made
by the real Podman on one network, with kindnet's and flannel's ways between their pods,
and a container on a second network that is not the cluster's.

What is real: Debian's podman 4.3 (CNI backend, runc), run in the lab machine's network
namespace as kind.py runs it (its configuration and state in the lab's directory), makes
both networks (`podman network create`, the kind network dual-stack with Docker's first
subnet 172.18.0.0/16 and kind's ULA) and runs the node containers on them, so the
bridge, its veths, the gateway addresses, podman's masquerade and firewall rules are the
CNI plugins' own. Podman 4.3 cannot name the bridge (`--interface-name` is younger): its
CNI configuration gets the name Docker gives a network's bridge, `br-` and the first 12
hex digits of the network's id, before any container starts.

What is by hand, as kind.py's node: the containers run no Kubernetes (`--rootfs` of the
machine's /usr, `sleep infinity`); inside each node's namespace, from the machine:
a pod on a point-to-point veth (kindnet's ptp: /32 and /128 addresses, the gateway on
the node's end), kindnet's routes to the other node's pod range via that node (IPv4 and
IPv6), and flannel's VXLAN as k3s lays it out in k3d (`flannel.1`, VNI 1, UDP 8472, a
second pod range routed `onlink` via the other node's flannel.1 address, its neighbour
and forwarding entries static as flanneld writes them); the banner servers of the lab:
the API server (:6443) and the kubelet (:10250) in each node, a web server (:8080) in
each pod. Podman's DNS on the gateway (aardvark-dns comes with netavark, which this
machine does not have; podman's CNI backend would use the dnsname plugin's dnsmasq,
also absent) is the lab's DNS responder, bound to the gateway addresses in the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import kind
from .nsutil import LabError, Netns, create_namespaces, run, wait_ready
from .topology import ANSWERS, DOCKER0, HOST_ETH0_MAC, V6, WEB_PORT, Lab

SUBNET = "172.18.0.0/16"  # Docker's first free pool, as kind gets it
OTHER_SUBNET = "172.20.0.0/16"  # another project's containers (172.19: the lab's BR_NET)
API_PORT, KUBELET_PORT, POD_PORT = 6443, 10250, 8080
# node1's API server published as kind publishes it for kubectl (127.0.0.1:<random>),
# and on every address as kind's extraPortMappings do (listenAddress 0.0.0.0).
KUBECTL_PORT, PUBLISHED_PORT = 36443, 36080
VXLAN_PORT = 8472  # flannel's vxlan backend (k3s, k3d)
# An address of the kind network's range that is not on its bridge: given to the lab's
# container on docker0 (a range NODE_NETWORKS names that another engine's network now has,
# or a range given too wide), with a port of every local address published to it (DNAT
# in prerouting and output, as Docker publishes) on its server.
STALE = {4: "172.18.250.7", 6: "fc00:f853:ccd:e793::fa7"}
STALE_PORT = 36081  # TCP to its server (WEB_PORT) and UDP, counted there (STALE_RX)
STALE_UDP_PORT = 9999  # where the published UDP port goes: no server, a counter
STALE_RX = "netlab_stale_rx"  # the container's table of counters, stale_v4 and stale_v6


def pod_range(n: int, v: int) -> str:
    """kindnet's per-node pod range of node `n` (kind's podSubnet 10.244.0.0/16 and its
    IPv6 /56), one per node."""
    return f"10.244.{n}.0/24" if v == 4 else f"fd00:10:244:{n}::/64"


def pod_addr(n: int, v: int, host: int = 2) -> str:
    return f"10.244.{n}.{host}" if v == 4 else f"fd00:10:244:{n}::{host}"


def flannel_range(n: int) -> str:
    """flannel's per-node range of node `n` (k3s' cluster-cidr 10.42.0.0/16)."""
    return f"10.42.{n}.0/24"


def flannel_addr(n: int, host: int = 2) -> str:
    return f"10.42.{n}.{host}"


def flannel_mac(n: int) -> str:
    return f"02:42:0a:2a:{n:02x}:00"


@dataclass
class Node:
    """A container on a podman network, and its addresses there."""

    role: str  # its namespace's name in the lab (node1, node2, other)
    container: str
    network: str
    ip4: str = ""
    ip6: str = ""


@dataclass
class Network:
    name: str
    subnets: tuple[str, ...]
    bridge: str = ""
    gateways: tuple[str, ...] = ()  # the bridge's addresses on the machine


@dataclass
class Cluster:
    """The two networks, three containers and what runs in them; `build`, then `destroy`."""

    lab: Lab
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    env: dict[str, str] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)  # what destroy removes

    @property
    def kind_network(self) -> Network:
        return self.networks["kind"]

    def node(self, n: int) -> Node:
        return self.nodes[f"node{n}"]

    def podman(self, *args: str) -> str:
        """podman in the machine's network namespace, with the lab's configuration."""
        argv = ["nsenter", f"--net={self.lab['host'].path}", "podman", *args]
        env = {**os.environ, **self.env}
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=120
        )
        if proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def build(self) -> None:
        lab = self.lab
        self.env = kind._podman_config(lab.tmp / "podman")
        base = f"{kind.NETWORK_PREFIX}{self.tag}"
        self._network("kind", base, "--ipv6", "--subnet", SUBNET, "--subnet", kind.ULA_SUBNET)
        self._network("other", f"{base}-other", "--subnet", OTHER_SUBNET)
        volumes = kind._rootfs(lab.tmp / "rootfs")
        self.nodes = {
            "node1": Node("node1", f"{base}-control-plane", self.networks["kind"].name),
            "node2": Node("node2", f"{base}-worker", self.networks["kind"].name),
            "other": Node("other", f"{base}-other", self.networks["other"].name),
        }
        # One after the other: podman's CNI backend gives addresses in this order.
        published = {
            "node1": [
                "-p",
                f"127.0.0.1:{KUBECTL_PORT}:{API_PORT}",
                "-p",
                f"{PUBLISHED_PORT}:{API_PORT}",
            ]
        }
        for node in self.nodes.values():
            self.created.append(("container", node.container))
            self.podman(
                "run", "-d", "--name", node.container, "--hostname", node.container,
                "--network", node.network, *published.get(node.role, []), *volumes,
                "--rootfs", str(lab.tmp / "rootfs"), "sleep", "infinity",
            )  # fmt: skip
        names = [n.container for n in self.nodes.values()]
        states = json.loads(self.podman("inspect", *names))
        for node, state in zip(self.nodes.values(), states, strict=True):
            addresses = state["NetworkSettings"]["Networks"][node.network]
            node.ip4, node.ip6 = str(addresses["IPAddress"]), str(addresses["GlobalIPv6Address"])
            ns = Netns(f"{lab.uid}-{node.role}")
            run(["ip", "netns", "attach", ns.name, str(state["State"]["Pid"])])
            lab.ns[node.role] = ns
        for net in self.networks.values():
            info = json.loads(self.podman("network", "inspect", net.name))[0]
            net.gateways = tuple(str(s["gateway"]) for s in info["subnets"])
        self._inside()
        self._stale()

    def _network(self, key: str, name: str, *options: str) -> None:
        self.podman("network", "create", "-d=bridge", *options, name)
        self.created.append(("network", name))
        info = json.loads(self.podman("network", "inspect", name))[0]
        conf = Path(self.env["CONTAINERS_CONF"]).parent / "net.d" / f"{name}.conflist"
        data = json.loads(conf.read_text())
        (bridge,) = [p for p in data["plugins"] if p["type"] == "bridge"]
        bridge["bridge"] = f"br-{str(info['id'])[:12]}"  # as Docker names it
        conf.write_text(json.dumps(data, indent=2))
        info = json.loads(self.podman("network", "inspect", name))[0]
        self.networks[key] = Network(
            name, tuple(str(s["subnet"]) for s in info["subnets"]), str(info["network_interface"])
        )

    def _inside(self) -> None:
        """Pods, kindnet's and flannel's routes, servers; the DNS stand-in on the gateways."""
        lab = self.lab
        pods = create_namespaces([f"{lab.uid}-pod1", f"{lab.uid}-pod2"])
        lab.ns["pod1"], lab.ns["pod2"] = pods
        bridge_mac = json.loads(
            lab["host"].exec("ip", "-j", "link", "show", self.kind_network.bridge).stdout
        )[0]["address"]
        gw6 = next(g for g in self.kind_network.gateways if ":" in g)
        for n in (1, 2):
            m = 3 - n
            node, other = self.node(n), self.node(m)
            ns, pod = lab[node.role], lab[f"pod{n}"]
            ns.sysctl(
                {
                    "net.ipv4.ip_forward": 1,
                    "net.ipv6.conf.all.forwarding": 1,
                    "net.ipv6.conf.all.accept_dad": 0,
                    "net.ipv6.conf.default.accept_dad": 0,
                    "net.ipv4.conf.all.rp_filter": 0,
                    "net.ipv4.conf.default.rp_filter": 0,
                    # No SYN-ACK retransmitted into the next cell of a test, where it
                    # would be counted (an off-link client's, which Mullvad's LAN
                    # sharing lets in and routes back into the tunnel).
                    "net.ipv4.tcp_synack_retries": 0,
                }
            )
            ns.ip(
                f"link add vethpod type veth peer name eth0 netns {pod.name}\n"
                f"addr add {pod_addr(n, 4, 1)}/32 dev vethpod\n"
                f"addr add {pod_addr(n, 6, 1)}/128 dev vethpod nodad\n"
                "link set vethpod up\n"
                f"route add {pod_addr(n, 4)}/32 dev vethpod\n"
                f"route add {flannel_addr(n)}/32 dev vethpod\n"
                f"route add {pod_addr(n, 6)}/128 dev vethpod\n"
                # kindnet: the other node's pod ranges via that node
                f"route add {pod_range(m, 4)} via {other.ip4}\n"
                f"route add {pod_range(m, 6)} via {other.ip6}\n"
                # flannel's vxlan backend, as flanneld sets it up
                f"link add flannel.1 address {flannel_mac(n)} type vxlan id 1 local {node.ip4}"
                f" dev eth0 dstport {VXLAN_PORT} nolearning\n"
                f"addr add {flannel_range(n).replace('.0/24', '.0/32')} dev flannel.1\n"
                "link set flannel.1 up\n"
                f"route add {flannel_range(m)} via {flannel_addr(m, 0)} dev flannel.1 onlink\n"
                f"neigh add {flannel_addr(m, 0)} lladdr {flannel_mac(m)} dev flannel.1"
                " nud permanent\n"
                # The machine as the node's IPv6 neighbour: the node would solicit it from
                # its ULA address, which Mullvad's input chain drops with LAN sharing off
                # (only fe80::/10 passes; tests/netlab/README.md), with or without our
                # table; given here so the probes of the gateway judge our rules.
                f"neigh replace {gw6} lladdr {bridge_mac} dev eth0 nud permanent\n"
            )
            ns.exec("bridge", "fdb", "append", flannel_mac(m), "dev", "flannel.1", "dst", other.ip4)
            pod.ip(
                "link set lo up\nlink set eth0 up\n"
                f"addr add {pod_addr(n, 4)}/32 dev eth0\n"
                f"addr add {flannel_addr(n)}/32 dev eth0\n"
                f"addr add {pod_addr(n, 6)}/128 dev eth0 nodad\n"
                f"route add {pod_addr(n, 4, 1)} dev eth0 scope link\n"
                f"route add default via {pod_addr(n, 4, 1)} dev eth0\n"
                f"route add {pod_addr(n, 6, 1)} dev eth0\n"
                f"route add default via {pod_addr(n, 6, 1)} dev eth0\n"
            )
        agents = [
            lab[f"node{n}"].spawn_agent(
                json.dumps({"ident": f"node{n}", "tcp": [["::", API_PORT], ["::", KUBELET_PORT]]})
            )
            for n in (1, 2)
        ]
        agents += [
            lab[f"pod{n}"].spawn_agent(json.dumps({"ident": f"pod{n}", "tcp": [["::", POD_PORT]]}))
            for n in (1, 2)
        ]
        agents.append(
            lab["other"].spawn_agent(json.dumps({"ident": "other", "tcp": [["::", API_PORT]]}))
        )
        gateways = [g for net in self.networks.values() for g in net.gateways]
        dns = {"addrs": gateways, "ports": [53], "answers": ANSWERS["aardvark"]}
        agents.append(lab["host"].spawn_agent(json.dumps({"ident": "aardvark", "dns": [dns]})))
        wait_ready(agents)

    def _stale(self) -> None:
        """STALE on the docker0 container, routed there, a port published to it; the LAN
        client and the machine know each other's IPv6 link-layer address (as the nodes
        know the gateway's: with LAN sharing off Mullvad drops their solicitations). The
        container asks for its gateway's link-layer address from its eth0 address
        (arp_announce 2), not from STALE: Mullvad's arp_ignore 2 answers only a sender
        on the interface's subnet."""
        host, ctr, client = self.lab["host"], self.lab[DOCKER0.role], self.lab["lanclient"]
        ctr.sysctl({"net.ipv4.conf.all.arp_announce": 2})
        ctr.ip("".join(f"addr add {STALE[v]}/{32 if v == 4 else 128} dev lo\n" for v in (4, 6)))
        host.ip(
            "".join(
                f"route add {STALE[v]} via {DOCKER0.ctr[v]} dev {DOCKER0.name}\n" for v in (4, 6)
            )
        )
        to = {4: f"ip to {STALE[4]}", 6: f"ip6 to [{STALE[6]}]"}
        dnat = "".join(
            f"\t\tmeta nfproto ipv{v} fib daddr type local {proto} dport {STALE_PORT} "
            f"dnat {to[v]}:{port}\n"
            for v in (4, 6)
            for proto, port in (("tcp", WEB_PORT), ("udp", STALE_UDP_PORT))
        )
        host.nft(
            "table inet netlab_stale {\n"
            f"\tchain pre {{\n\t\ttype nat hook prerouting priority -100;\n{dnat}\t}}\n"
            f"\tchain out {{\n\t\ttype nat hook output priority -100;\n{dnat}\t}}\n"
            "}\n"
        )
        ctr.nft(
            f"table inet {STALE_RX} {{\n\tcounter stale_v4 {{ }}\n\tcounter stale_v6 {{ }}\n"
            "\tchain rx {\n\t\ttype filter hook prerouting priority -400;\n"
            f"\t\tip daddr {STALE[4]} udp dport {STALE_UDP_PORT} counter name stale_v4\n"
            f"\t\tip6 daddr {STALE[6]} udp dport {STALE_UDP_PORT} counter name stale_v6\n"
            "\t}\n}\n"
        )
        mac = client.exec("cat", "/sys/class/net/eth0/address").stdout.strip()
        host.ip(f"neigh replace {V6.lan_client} lladdr {mac} dev eth0 nud permanent\n")
        client.ip(f"neigh replace {V6.host_lan} lladdr {HOST_ETH0_MAC} dev eth0 nud permanent\n")

    def destroy(self) -> list[str]:
        """Remove the containers, then the networks (each only if made); return errors."""
        errors = []
        containers = [name for what, name in self.created if what == "container"]
        if containers:
            try:
                self.podman("rm", "-f", "-t", "0", *containers)
            except LabError as exc:  # one that never started is not an error
                if "no such container" not in str(exc):
                    errors.append(str(exc))
        for what, name in self.created:
            if what == "network":
                try:
                    self.podman("network", "rm", "-f", name)
                except LabError as exc:
                    errors.append(str(exc))
                shutil.rmtree(kind.IPAM_DIR / name, ignore_errors=True)
        self.created.clear()
        return errors
