"""The lab's topology: one machine running Mullvad and a one-node cluster, and its world.

    lanclient ns 192.168.1.50 ---+
                                  | (bridge lanbr)
    lan ns: router 192.168.1.1 ---+   and "the internet" on its lo: remote client
            |                         203.0.113.7, web server 203.0.113.80, resolvers
         lan0
            |
         eth0 192.168.1.100 ------ host ns ------ wg0-mullvad 10.64.0.2 == tun0 vpn ns
                                     |                 (relay side: in-tunnel resolver
                                   cni0 10.244.0.1      10.64.0.1, the same internet
                           /         |         \\        servers reached through the tunnel)
                  client pod     web pod      coredns pod       (and the hostport pod)
                  10.244.0.2   10.244.0.3:8080  10.244.0.4:53
                                     |
                       br-0a1b2c3d4e5f 172.18.0.1 (a Docker network, kind's subnet)
                                     |
                           node 172.18.0.2:80 (a container cluster's node; the host's
                                               :8083 is published to it, as Docker does)

IPv6 mirrors it with ULA and documentation prefixes. Every namespace name carries the
pytest process id and a random tag, so parallel or interrupted runs never collide.

The tunnel is a veth pair with ARP off and the same MAC at both ends, so it behaves
like WireGuard's L3 device (a plain `dev wg0-mullvad` default route works) while
packets entering it can still be counted on the far side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cni, kube_proxy, mullvad_emu
from .mullvad_emu import MullvadState, Tunnel
from .nsutil import (
    LabError,
    Netns,
    create_namespaces,
    delete_namespaces,
    remove_cgroup_mount,
    run,
    wait_ready,
)

PREFIX = "nlab"
# "hostport" is a pod set up by Debian's CNI plugins (bridge, host-local, portmap) as a
# container runtime sets one up, with a hostPort; the other pods are wired by hand.
# "docker" and "brctr" are containers that are not the cluster's (NON_CLUSTER_BRIDGES).
# "node" is a node of a cluster in containers (kind, k3d, minikube's docker driver) on
# a Docker network's bridge, with a port of the host published to it.
ROLES = (
    "host",
    "lan",
    "lanclient",
    "vpn",
    "client",
    "web",
    "coredns",
    "hostport",
    "docker",
    "brctr",
    "node",
)

NODEPORT = 30080
# default/web-local: the web pod again, with externalTrafficPolicy: Local (its NodePort,
# and its port on the LoadBalancer IP, which it shares with default/web)
LOCAL_NODEPORT = 30081
LOCAL_SVC_PORT = 81
WEB_PORT = 8080
API_PORT = 6443
DNS_ALT_PORT = 5300  # the same DNS responder on a port Mullvad does not filter (bench)
IPERF_PORT = 5201
SVC_WEB_PORT = 80
SVC_API_PORT = 443
# Ports of the internet server, one per probe so each probe has its own counter.
INET_HOST, INET_HOST_SPORT, INET_POD, INET_EXT_POD, INET_EXT_HOST = 443, 444, 445, 446, 447
INET_EXT_EXCLUDED = 448  # the external Service's endpoint for a split-tunnel excluded process
CLIENT_FIXED_SPORT = 8443  # a non-ephemeral source port for an outgoing host connection
HOST_EPHEMERAL_PORT = 40000  # a host server inside the ephemeral range: never exempted
HOSTPORT = 8088  # the hostport pod's hostPort (-> WEB_PORT in the pod), by CNI portmap
HOST_SERVICE_PORT = 22  # a host service that is not part of the cluster (an sshd)
LB_PORT = 80  # the web Service's port on its LoadBalancer IP
SPOOF_PORT = 9999  # UDP port spoofed pod-source packets are sent to (counted, no server)
HOST_ETH0_MAC = "02:00:00:00:01:00"  # pinned in the router's neighbour table (spoof probes)
LAN_SERVICE_PORT = 8081  # a server on the LAN client (a NAS, a printer)
# Lab.barrier's marker datagrams: a DHCP server's answer (udp 67 -> 68), which Mullvad's
# forward chain accepts from any address to any address in every state (dhcp_client).
# Untracked in the machine: a conntrack entry would be masqueraded (the CNI's rule) to
# the way the first marker left, and the kernel drops a masqueraded flow's packet when
# Mullvad's routing sends it another way (tunnel <-> LAN) after a state change.
MARKER_SPORT, MARKER_DPORT = 67, 68
MARKER_TABLE = (
    "table inet netlab_markers {\n\tchain raw {\n"
    "\t\ttype filter hook prerouting priority raw; policy accept;\n"
    f"\t\tudp sport {MARKER_SPORT} udp dport {MARKER_DPORT} notrack\n\t}}\n}}\n"
)
NODE_BRIDGE = "br-0a1b2c3d4e5f"  # Docker names a network's bridge br-<12 hex of its id>
PUBLISHED_PORT = 8083  # the host's port published to the node (`docker run -p 8083:80`)
NODE_SERVICE_PORT = 80  # where it goes in the node (kind's extraPortMappings: ingress)

# Which resolver answered: each answers every A/AAAA question with its own address.
ANSWERS: dict[str, dict[str, str]] = {
    "coredns": {"A": "192.0.2.1", "AAAA": "2001:db8::1"},
    "tunnel": {"A": "192.0.2.2", "AAAA": "2001:db8::2"},
    "outside-lan": {"A": "192.0.2.3", "AAAA": "2001:db8::3"},
    "outside-vpn": {"A": "192.0.2.4", "AAAA": "2001:db8::4"},
    "aardvark": {"A": "192.0.2.5", "AAAA": "2001:db8::5"},  # a container engine's, on a bridge
}
IDENT_BY_ANSWER = {addr: who for who, a in ANSWERS.items() for addr in a.values()}

RELAY = "198.51.100.10"


@dataclass(frozen=True)
class Fam:
    """The lab's addresses in one IP family."""

    v: int
    plen_lan: int
    host_lan: str
    router: str
    lan_client: str
    remote: str
    internet: str
    outside_dns_pod: str  # an outside resolver that pods try
    outside_dns_host: str  # and one the host tries (separate counters)
    tun_host: str
    tun_gw: str
    cni_gw: str
    client_pod: str
    web_pod: str
    dns_pod: str
    pod_cidr: str  # this node's pod range (on cni0)
    svc_cidr: str
    kube_dns: str
    web_svc: str
    web_local_svc: str  # default/web-local (externalTrafficPolicy: Local)
    api_svc: str
    ext_svc: str  # a service whose endpoint is outside the cluster (the internet server)
    cluster_pod_cidr: str  # the cluster's pod range (POD_CIDRS): other nodes have the rest
    other_node_pod: str  # a pod on another node, unreachable from this one-node lab
    unassigned_svc: str  # a service address with no service behind it (no DNAT)
    lb_ip: str  # a LoadBalancer IP (MetalLB style): routed to the node, not configured on it
    spoof_pod: str  # a pod-range address no pod has: the LAN side claims it as its source
    node_net: str  # the Docker network of a cluster in containers (kind's subnets)
    node_gw: str  # the host's address on its bridge
    node: str  # the node container's address

    @property
    def any(self) -> str:
        return "0.0.0.0" if self.v == 4 else "::"

    @property
    def nfproto(self) -> str:
        return "ip" if self.v == 4 else "ip6"


V4 = Fam(
    v=4,
    plen_lan=24,
    host_lan="192.168.1.100",
    router="192.168.1.1",
    lan_client="192.168.1.50",
    remote="203.0.113.7",
    internet="203.0.113.80",
    outside_dns_pod="198.51.100.53",
    outside_dns_host="198.51.100.54",
    tun_host="10.64.0.2",
    tun_gw="10.64.0.1",
    cni_gw="10.244.0.1",
    client_pod="10.244.0.2",
    web_pod="10.244.0.3",
    dns_pod="10.244.0.4",
    pod_cidr="10.244.0.0/24",
    svc_cidr="10.96.0.0/12",
    kube_dns="10.96.0.10",
    web_svc="10.96.0.20",
    web_local_svc="10.96.0.21",
    api_svc="10.96.0.1",
    ext_svc="10.96.0.30",
    cluster_pod_cidr="10.244.0.0/16",
    other_node_pod="10.244.1.5",
    unassigned_svc="10.96.0.99",
    lb_ip="192.168.1.240",
    spoof_pod="10.244.0.9",
    node_net="172.18.0.0/16",
    node_gw="172.18.0.1",
    node="172.18.0.2",
)
V6 = Fam(
    v=6,
    plen_lan=64,
    host_lan="fd00:1::100",
    router="fd00:1::1",
    lan_client="fd00:1::50",
    remote="2001:db8:203::7",
    internet="2001:db8:203::80",
    outside_dns_pod="2001:db8:53::53",
    outside_dns_host="2001:db8:53::54",
    tun_host="fc00:bbbb:bbbb:bb01::2",
    tun_gw="fc00:bbbb:bbbb:bb01::1",
    cni_gw="fd00:10:244::1",
    client_pod="fd00:10:244::2",
    web_pod="fd00:10:244::3",
    dns_pod="fd00:10:244::4",
    pod_cidr="fd00:10:244::/64",
    svc_cidr="fd00:10:96::/112",
    kube_dns="fd00:10:96::a",
    web_svc="fd00:10:96::14",
    web_local_svc="fd00:10:96::15",
    api_svc="fd00:10:96::1",
    ext_svc="fd00:10:96::1e",
    cluster_pod_cidr="fd00:10:244::/56",
    other_node_pod="fd00:10:244:1::5",
    unassigned_svc="fd00:10:96::63",
    lb_ip="fd00:1::240",
    spoof_pod="fd00:10:244::9",
    node_net="fc00:f853:ccd:e793::/64",
    node_gw="fc00:f853:ccd:e793::1",
    node="fc00:f853:ccd:e793::2",
)
FAMILIES = (V4, V6)
TUNNEL = Tunnel(ips=(V4.tun_host, V6.tun_host), dns=(V4.tun_gw, V6.tun_gw), relay=RELAY)
POD_ROLES = {"client": "client_pod", "web": "web_pod", "coredns": "dns_pod"}


# --- issue 22, forward/output side: what is on the machine but not the cluster's ------
# Bridges named like the cluster's (docker0 and br-* are in the default
# CLUSTER_INTERFACES) with a container each that is not the cluster's, Services that
# leave the cluster, and Mullvad's split-tunnel cgroup (see Lab).


@dataclass(frozen=True)
class OtherBridge:
    """A container engine's bridge with one container on it, not the cluster's.

    IPv6 with documentation addresses outside fc00::/7 (Docker's docs use 2001:db8:1::/64
    for `fixed-cidr-v6`), so that Mullvad's LAN sharing, which accepts fc00::/7, does not
    decide the IPv6 probes. Neighbours are pinned both ways: Mullvad's input chain takes
    solicitations from fe80::/10 only, which is not what these probes are about."""

    role: str
    name: str
    mac: str  # the bridge's (the container's gateway)
    gw: dict[int, str]  # the machine's address on it, by family
    ctr: dict[int, str]  # the container's
    plen: dict[int, int]


DOCKER0 = OtherBridge(
    "docker",
    "docker0",
    "02:42:ac:11:00:01",
    {4: "172.17.0.1", 6: "2001:db8:1::1"},
    {4: "172.17.0.2", 6: "2001:db8:1::2"},
    {4: 16, 6: 64},
)
# A user-defined Docker network (br-<id>); 172.19.0.0/16, not kind's 172.18.0.0/16,
# which test_matrix's NODE_NETWORKS scenarios and bench/rules_per_packet.py use.
BR_NET = OtherBridge(
    "brctr",
    "br-5e1f0c2a9d3b",
    "02:42:ac:13:00:01",
    {4: "172.19.0.1", 6: "2001:db8:2::1"},
    {4: "172.19.0.2", 6: "2001:db8:2::2"},
    {4: 16, 6: 64},
)
NON_CLUSTER_BRIDGES = (DOCKER0, BR_NET)

# ClusterIPs whose endpoints are not the cluster's: a container on docker0 (a Service with
# a hand-made EndpointSlice, as people point a Service at a Docker container), and a
# pod-range address on no node here (a pod elsewhere with nothing routing it here).
DOCKER_SVC = {4: "10.96.0.40", 6: "fd00:10:96::28"}
OFF_NODE = {4: "10.244.7.7", 6: "fd00:10:244:7::7"}
OFF_NODE_SVC = {4: "10.96.0.50", 6: "fd00:10:96::32"}
OFF_NODE_PORT = 8082
EXT_EXCLUDED_PORT = 82  # the external Service's port whose endpoint is INET_EXT_EXCLUDED

NON_CLUSTER_WATCHES = {
    "host_svc_off_node": "{ip} daddr {off_node} tcp dport " + str(OFF_NODE_PORT),
    "excluded_ext_svc": "{ip} daddr {internet} tcp dport " + str(INET_EXT_EXCLUDED),
}


def non_cluster_services(f: Fam) -> list[kube_proxy.Service]:
    """default/docker-app: http 80 -> the docker0 container's 8080; default/off-node:
    http 80 -> OFF_NODE:8082; default/external's port 82 (the split-tunnel probe's)."""
    svc = kube_proxy.Service
    return [
        svc(
            "default",
            "docker-app",
            "http",
            "tcp",
            DOCKER_SVC[f.v],
            SVC_WEB_PORT,
            ((DOCKER0.ctr[f.v], WEB_PORT),),
        ),
        svc(
            "default",
            "off-node",
            "http",
            "tcp",
            OFF_NODE_SVC[f.v],
            SVC_WEB_PORT,
            ((OFF_NODE[f.v], OFF_NODE_PORT),),
        ),
        svc(
            "default",
            "external",
            "c",
            "tcp",
            f.ext_svc,
            EXT_EXCLUDED_PORT,
            ((f.internet, INET_EXT_EXCLUDED),),
        ),
    ]


def non_cluster_links(host: Netns, spaces: dict[str, Netns]) -> None:
    """The bridges, their containers, addresses, routes and pinned neighbours."""
    for b in NON_CLUSTER_BRIDGES:
        ctr = spaces[b.role]
        lines = [
            f"link add {b.name} address {b.mac} type bridge mcast_snooping 0",
            f"link add veth-{b.role} type veth peer name eth0 netns {ctr.name}",
            f"link set veth-{b.role} master {b.name} up",
            f"link set {b.name} up",
        ]
        inner = ["link set lo up", "link set eth0 up"]
        for v in (4, 6):
            nodad = " nodad" if v == 6 else ""
            lines.append(f"addr add {b.gw[v]}/{b.plen[v]} dev {b.name}{nodad}")
            inner += [
                f"addr add {b.ctr[v]}/{b.plen[v]} dev eth0{nodad}",
                f"route add default via {b.gw[v]}",
            ]
        inner.append(f"neigh replace {b.gw[6]} lladdr {b.mac} dev eth0 nud permanent")
        host.ip("\n".join(lines) + "\n")
        ctr.ip("\n".join(inner) + "\n")
        mac = ctr.exec("cat", "/sys/class/net/eth0/address").stdout.strip()
        host.ip(f"neigh replace {b.ctr[6]} lladdr {mac} dev {b.name} nud permanent\n")


# --- issue 22, prerouting side: ways in that `prerouting_new_*` and `confirm` judge ------
# Kept in one block. Everything here is used by the probes of probes.inbound_probes.

OTHER_IF = "eth1"  # a second interface of the machine (Wi-Fi, a second NIC); nothing behind it
UDP_NODEPORT = 30999  # the UDP Service's NodePort (-> SPOOF_PORT in the web pod)
HOSTPORT_UDP = HOSTPORT  # the hostport pod's UDP hostPort, same number (-> SPOOF_PORT)
SINK_PORT = 9998  # UDP port in the web pod where a flow's datagrams are counted, then dropped
INBOUND_RX = "netlab_rx_inbound"  # the receivers' table (in the web and hostport pods)
# Counted datagrams, by payload (distinct from SPOOF_PAYLOAD's first bytes, so the
# spoof_pod counter on the same port does not count them): counter -> (pod, port, payload).
INBOUND_RECEIVERS: dict[str, tuple[str, int, bytes]] = {
    "via_nodeport": ("web", SPOOF_PORT, b"via-nodeport"),
    "via_lb": ("web", SPOOF_PORT, b"via-lb"),
    "via_hostport": ("hostport", SPOOF_PORT, b"via-hostport"),
    "burst": ("web", SINK_PORT, b"burst"),
}


@dataclass(frozen=True)
class Inbound:
    """The machine's addresses of one family that traffic from outside can be sent to,
    besides the LAN address (its field names are usable in WATCHES)."""

    other_if: str  # its address on OTHER_IF
    other_if_plen: int
    public: str  # PUBLIC_ADDRESSES: on the machine's lo, routed to it by the LAN router
    udp_svc: str  # ClusterIP of default/udp (UDP_NODEPORT, the LoadBalancer IP)
    api_other_svc: str  # ClusterIP of a Service in front of the API server on other_if
    extip_svc: str  # ClusterIP of default/extip (externalIPs: Mullvad's gateway, tun_gw)


INBOUND = {
    4: Inbound("192.168.2.100", 24, "198.51.100.100", "10.96.0.41", "10.96.0.43", "10.96.0.42"),
    6: Inbound(
        "fd00:2::100", 64, "2001:db8:100::100", "fd00:10:96::29", "fd00:10:96::2b", "fd00:10:96::2a"
    ),
}
INBOUND_WATCHES = {
    "remote_public_api": "{ip} saddr {public} {ip} daddr {remote} tcp sport " + str(API_PORT),
}


def inbound_services(f: Fam) -> list[kube_proxy.Service]:
    """default/udp: a UDP Service (a game server, syslog) with a NodePort and the web
    Service's LoadBalancer IP, -> the web pod's SPOOF_PORT, where spoofed datagrams are
    counted. default/apiserver-eth1: the API server's endpoint on OTHER_IF's address, what
    `default/kubernetes` is when the API server advertises that address. default/extip:
    the web pod on an external IP that is Mullvad's in-tunnel gateway (kube-proxy takes
    any externalIPs a Service names, CVE-2020-8554; only an admission policy stops it)."""
    i = INBOUND[f.v]
    svc = kube_proxy.Service
    spoof = ((f.web_pod, SPOOF_PORT),)
    return [
        svc("default", "udp", "udp", "udp", i.udp_svc, SPOOF_PORT, spoof, UDP_NODEPORT, (f.lb_ip,)),
        svc(
            "default",
            "apiserver-eth1",
            "https",
            "tcp",
            i.api_other_svc,
            SVC_API_PORT,
            ((i.other_if, API_PORT),),
        ),
        svc(
            "default",
            "extip",
            "http",
            "tcp",
            i.extip_svc,
            SVC_WEB_PORT,
            ((f.web_pod, WEB_PORT),),
            external_ips=(f.tun_gw,),
        ),
    ]


def inbound_hostports() -> list[cni.PortMapping]:
    """The hostport pod's UDP hostPort (added to its TCP one by the same portmap ADD)."""
    return [cni.PortMapping(HOSTPORT_UDP, SPOOF_PORT, "udp")]


def inbound_receivers(role: str) -> str:
    """Counters of the datagrams INBOUND_RECEIVERS expects in `role`'s namespace. Each is
    dropped once counted: no port-unreachable answers it, which would be a reply of its
    flow (and a flow without replies is what the burst probe needs)."""
    counters, rules = [], []
    for name, (where, port, payload) in INBOUND_RECEIVERS.items():
        if where != role:
            continue
        match = f"@th,64,{8 * len(payload)} 0x{payload.hex()}"
        for f in FAMILIES:
            counter = watch_name(name, f)
            counters.append(f"\tcounter {counter} {{ }}\n")
            rules.append(
                f'meta nfproto ipv{f.v} udp dport {port} {match} counter name "{counter}" drop'
            )
    head = "type filter hook input priority 0; policy accept;"
    return f"table inet {INBOUND_RX} {{\n" + "".join(counters) + _chain("rx", head, rules) + "}\n"


def build_inbound(lab: Lab) -> None:
    """The second interface and the public address on the machine, the LAN router's
    routes to them, the receivers; and the hostport pod's IPv6 gateway pinned in its
    neighbour table: a pod solicits its gateway from its own ULA address, which Mullvad's
    input chain drops with LAN sharing off (see probes.nd), so without it no IPv6 pod could
    reach the machine and its rule for that would go untested."""
    # A veth pair with nothing behind it (the lab's kernel has no dummy driver).
    host = [
        f"link add {OTHER_IF} type veth peer name {OTHER_IF}-peer",
        f"link set {OTHER_IF}-peer up",
        f"link set {OTHER_IF} up",
    ]
    lan = []
    for f in FAMILIES:
        i, nodad = INBOUND[f.v], " nodad" if f.v == 6 else ""
        host += [
            f"addr add {i.other_if}/{i.other_if_plen} dev {OTHER_IF}{nodad}",
            f"addr add {i.public}/{32 if f.v == 4 else 128} dev lo{nodad}",
        ]
        lan += [
            f"route add {i.other_if} via {f.host_lan}",
            f"route add {i.public} via {f.host_lan}",
            f"route add {f.tun_gw} via {f.host_lan}",
        ]
    lab["host"].ip("\n".join(host) + "\n")
    lab["lan"].ip("\n".join(lan) + "\n")
    for role in {where for where, _, _ in INBOUND_RECEIVERS.values()}:
        lab[role].nft(inbound_receivers(role))
    link = json.loads(lab["host"].exec("ip", "-j", "link", "show", "cni0").stdout)
    lab["hostport"].ip(
        f"neigh replace {V6.cni_gw} lladdr {link[0]['address']} dev eth0 nud permanent\n"
    )


# --- end of issue 22, prerouting side ----------------------------------------------------

# Packets entering the vpn namespace from the tunnel (tun0) and the LAN router from the
# host (lan0) are counted per watch: which way did a reply or a connection leave?
WATCHES: dict[str, str] = {
    "remote_nodeport": "{ip} daddr {remote} tcp sport " + str(NODEPORT),
    "remote_api": "{ip} daddr {remote} tcp sport " + str(API_PORT),
    "remote_ephemeral": "{ip} daddr {remote} tcp sport " + str(HOST_EPHEMERAL_PORT),
    "remote_host_service": "{ip} daddr {remote} tcp sport " + str(HOST_SERVICE_PORT),
    "remote_hostport": "{ip} daddr {remote} tcp sport " + str(HOSTPORT),
    "remote_lb": "{ip} saddr {lb_ip} {ip} daddr {remote} tcp sport " + str(LB_PORT),
    "remote_nodeport_local": "{ip} daddr {remote} tcp sport " + str(LOCAL_NODEPORT),
    "remote_lb_local": "{ip} saddr {lb_ip} {ip} daddr {remote} tcp sport " + str(LOCAL_SVC_PORT),
    "remote_published": "{ip} daddr {remote} tcp sport " + str(PUBLISHED_PORT),
    "host_inet": "{ip} daddr {internet} tcp dport " + str(INET_HOST),
    "host_inet_sport": "{ip} daddr {internet} tcp dport " + str(INET_HOST_SPORT),
    "pod_inet": "{ip} daddr {internet} tcp dport " + str(INET_POD),
    "pod_ext_svc": "{ip} daddr {internet} tcp dport " + str(INET_EXT_POD),
    "host_ext_svc": "{ip} daddr {internet} tcp dport " + str(INET_EXT_HOST),
    "pod_outside_dns": "{ip} daddr {outside_dns_pod} meta l4proto {{ tcp, udp }} th dport 53",
    "host_outside_dns": "{ip} daddr {outside_dns_host} meta l4proto {{ tcp, udp }} th dport 53",
    "pod_other_node": "{ip} daddr {other_node_pod}",
    "pod_unassigned_svc": "{ip} daddr {unassigned_svc} tcp dport " + str(SVC_WEB_PORT),
    "host_unassigned_svc": "{ip} daddr {unassigned_svc} tcp dport " + str(SVC_WEB_PORT + 1),
    **NON_CLUSTER_WATCHES,
    **INBOUND_WATCHES,
}


def watch_name(watch: str, fam: Fam) -> str:
    return f"{watch}_v{fam.v}"


def _chain(name: str, head: str, rules: list[str]) -> str:
    body = "".join(f"\t\t{r}\n" for r in rules)
    return f"\tchain {name} {{\n\t\t{head}\n{body}\t}}\n"


KUBE_PROXY_MODES = ("iptables", "nftables")


def kube_services(f: Fam) -> list[kube_proxy.Service]:
    """The cluster's Services in family `f`, as kube-proxy sees them (one value per port).

    Dual-stack Services: the same names in both families, one ClusterIP each.

    * kube-system/kube-dns: dns (UDP 53), dns-tcp (TCP 53), and 5300 UDP+TCP (the bench)
      -> the CoreDNS pod.
    * default/web: type LoadBalancer with allocateLoadBalancerNodePorts=false, http 80
      -> web pod 8080 with an explicit nodePort 30080, iperf 5201 (no nodePort); the
      LoadBalancer IP `lb_ip` (MetalLB style, status.loadBalancer.ingress) on both.
    * default/web-local: the web pod again (http 81 -> 8080, nodePort 30081, port 81 on
      the same LoadBalancer IP), with externalTrafficPolicy: Local, which a user sets so
      that the pod sees the client's own address: kube-proxy then marks for masquerade
      only pod and local traffic to it, not a client's (pkg/proxy/iptables/proxier.go
      syncProxyRules, the externalTrafficChain's "pod traffic for %s external
      destinations", "masquerade LOCAL traffic ..." and "route LOCAL traffic ..." rules;
      pkg/proxy/nftables/proxier.go, "short-circuit pod traffic", "masquerade local
      traffic", "short-circuit local traffic"; rendered by kube_proxy.py, upstream
      kube_proxy.UPSTREAM). Its healthCheckNodePort is left out (kube_proxy.py).
    * default/kubernetes: https 443 -> the API server on the node's LAN address :6443.
    * default/external: selector-less, a hand-made EndpointSlice outside the cluster
      (the internet server), ports 80 and 81.
    """
    svc = kube_proxy.Service
    dns, dns_alt = ((f.dns_pod, 53),), ((f.dns_pod, DNS_ALT_PORT),)
    web, iperf = ((f.web_pod, WEB_PORT),), ((f.web_pod, IPERF_PORT),)
    api = ((f.host_lan, API_PORT),)
    lb = (f.lb_ip,)
    return [
        svc("kube-system", "kube-dns", "dns", "udp", f.kube_dns, 53, dns),
        svc("kube-system", "kube-dns", "dns-tcp", "tcp", f.kube_dns, 53, dns),
        svc("kube-system", "kube-dns", "dns-alt", "udp", f.kube_dns, DNS_ALT_PORT, dns_alt),
        svc("kube-system", "kube-dns", "dns-alt-tcp", "tcp", f.kube_dns, DNS_ALT_PORT, dns_alt),
        svc("default", "web", "http", "tcp", f.web_svc, SVC_WEB_PORT, web, NODEPORT, lb),
        svc("default", "web", "iperf", "tcp", f.web_svc, IPERF_PORT, iperf, None, lb),
        svc(
            "default",
            "web-local",
            "http",
            "tcp",
            f.web_local_svc,
            LOCAL_SVC_PORT,
            web,
            LOCAL_NODEPORT,
            lb,
            local_traffic=True,
        ),
        svc("default", "kubernetes", "https", "tcp", f.api_svc, SVC_API_PORT, api),
        svc("default", "external", "a", "tcp", f.ext_svc, 80, ((f.internet, INET_EXT_POD),)),
        svc("default", "external", "b", "tcp", f.ext_svc, 81, ((f.internet, INET_EXT_HOST),)),
        *non_cluster_services(f),
        *inbound_services(f),
    ]


def all_kube_services() -> list[kube_proxy.Service]:
    return [svc for f in FAMILIES for svc in kube_services(f)]


CLUSTER_CIDRS = [f.cluster_pod_cidr for f in FAMILIES]  # kube-proxy's --cluster-cidr


def kube_proxy_nft() -> str:
    """kube-proxy nftables mode: tables `ip kube-proxy` and `ip6 kube-proxy`.

    With the ServiceCIDRs, as kube-proxy v1.33 learns them from the ServiceCIDR objects
    (MultiCIDRServiceAllocator, on by default since v1.33), so traffic to unallocated
    ClusterIPs is dropped.
    """
    return kube_proxy.nftables(
        all_kube_services(), CLUSTER_CIDRS, service_cidrs=[f.svc_cidr for f in FAMILIES]
    )


def kube_proxy_iptables(f: Fam) -> str:
    """kube-proxy iptables mode, one family: its `--noflush` restore (the jumps from the
    built-in chains are kube_proxy.ensure_iptables_jumps's), so the CNI portmap plugin's
    chains in `ip nat` / `ip6 nat` survive as on a real node."""
    return kube_proxy.iptables_restore(all_kube_services(), f.v, f.cluster_pod_cidr, noflush=True)


def docker_published(f: Fam) -> str:
    """Docker's nat rules for the node's network and its published port, one family, for
    `iptables-restore --noflush` (ip6tables for IPv6, as Docker writes them there with
    ip6tables enabled): the shape of moby/moby
    integration/network/bridge/iptablesdoc/generated/usernet-portmap.md at 0546d9084fcc
    (`docker network create` + `docker run -p 8083:80`): PREROUTING and OUTPUT jump to
    DOCKER for local destinations, DOCKER returns what comes from the bridge itself and
    DNATs the published port to the container, and the network's own masquerade of what
    its containers send elsewhere. The filter table's rules are left out: they only
    accept, which cannot override Mullvad's forward chain, and need ipset here.
    """
    loopback = "127.0.0.0/8" if f.v == 4 else "::1/128"
    node = f.node if f.v == 4 else f"[{f.node}]"
    lines = [
        f"# Docker's published port, IPv{f.v}",
        "*nat",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A POSTROUTING -s {f.node_net} ! -o {NODE_BRIDGE} -j MASQUERADE",
        f"-A DOCKER -i {NODE_BRIDGE} -j RETURN",
        f"-A DOCKER ! -i {NODE_BRIDGE} -p tcp -m tcp --dport {PUBLISHED_PORT} "
        f"-j DNAT --to-destination {node}:{NODE_SERVICE_PORT}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def cni_masquerade_rules() -> str:
    """The bridge CNI's pod -> outside masquerade (ipMasq), in a table of its own: the
    CNI's, not kube-proxy's."""
    out = []
    for f in FAMILIES:
        ip = f.nfproto
        rule = f'{ip} saddr {f.pod_cidr} {ip} daddr != {f.pod_cidr} oifname != "cni0" masquerade'
        out.append(
            f"table {ip} netlab_cni\ndelete table {ip} netlab_cni\n"
            f"table {ip} netlab_cni {{\n"
            + _chain("postrouting", "type nat hook postrouting priority 100;", [rule])
            + "}\n"
        )
    return "".join(out)


# Spoofed pod-source packets are counted where they would be received: in the pod
# namespaces and, after Mullvad's input chain (priority 0), in the host.
SPOOF_RECEIVERS = {"web": "spoof_pod", "coredns": "spoof_svc", "host": "spoof_host"}


SPOOF_PAYLOAD = b"spoofed"


def receiver_rules(counter: str, port: int, priority: int) -> str:
    """Counters of the spoofed packets that reached this namespace, recognised by their
    payload: a masquerade on the way (kube-proxy's, for fwmark bit 0x4000) changes the
    source they arrive with, not the payload."""
    counters, rules = [], []
    payload = f"@th,64,{8 * len(SPOOF_PAYLOAD)} 0x{SPOOF_PAYLOAD.hex()}"
    for f in FAMILIES:
        name = watch_name(counter, f)
        counters.append(f"\tcounter {name} {{ }}\n")
        rules.append(f'meta nfproto ipv{f.v} udp dport {port} {payload} counter name "{name}"')
    head = f"type filter hook input priority {priority}; policy accept;"
    return "table inet netlab_rx {\n" + "".join(counters) + _chain("rx", head, rules) + "}\n"


def counter_rules(
    ifname: str, watches: dict[str, str] = WATCHES, table: str = "netlab_counters"
) -> str:
    """Named counters for every watch, on packets arriving on `ifname`.

    A watch is an nft match with the family's addresses as `{field}` (any Fam or Inbound
    field, or off_node)."""
    counters, rules = [], []
    for f in FAMILIES:
        fmt = {
            "ip": f.nfproto,
            "off_node": OFF_NODE[f.v],
            **dataclasses.asdict(f),
            **dataclasses.asdict(INBOUND[f.v]),
        }
        for watch, match in watches.items():
            name = watch_name(watch, f)
            counters.append(f"\tcounter {name} {{ }}\n")
            rules.append(f'iifname "{ifname}" {match.format(**fmt)} counter name "{name}"')
    head = "type filter hook prerouting priority -400; policy accept;"
    return f"table inet {table} {{\n" + "".join(counters) + _chain("watch", head, rules) + "}\n"


def named_counters(table: str, head: str, matches: dict[str, str]) -> str:
    """Table `inet table` afresh (counters at 0): one chain with `head`, and for each
    name a rule `match counter name "name"`."""
    counters = "".join(f"\tcounter {name} {{ }}\n" for name in matches)
    rules = [f'{match} counter name "{name}"' for name, match in matches.items()]
    return (
        f"table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
        + counters
        + _chain("count", head, rules)
        + "}\n"
    )


def read_counters(ns: Netns, table: str) -> dict[str, int]:
    """Counter name -> packets, of table `inet table` in `ns`."""
    data = json.loads(ns.exec("nft", "-j", "list", "counters", "table", "inet", table).stdout)
    return {
        item["counter"]["name"]: int(item["counter"]["packets"])
        for item in data["nftables"]
        if "counter" in item
    }


# Seconds between a pod's router reachability probes in every lab (a day: a pod's first
# minute, see Lab.build and Lab._settle_pods).
ROUTER_PROBE_INTERVAL = 86400


def _datagram(dst: str, port: int) -> None:
    """One UDP datagram to dst:port (run inside a namespace); its fate is not asked."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(b"settle", (dst, port))


class Lab:
    """One scenario's namespaces. `build()` then `destroy()` (always, also on failure)."""

    def __init__(
        self,
        mullvad: MullvadState,
        *,
        rp_filter: int = 2,
        br_nf: bool = True,
        kube_proxy: str = "iptables",
        container_node: bool = True,
        settled: bool = False,
    ) -> None:
        """`container_node=False`: no "node" (test_kind and test_multinode make kind's
        network, whose subnets are the node's, with the real Podman instead;
        bench/rules_per_packet.py makes nodes of its own on the node's bridge).
        `settled`: pods more than a minute old, which know their IPv6 gateway (see
        `_settle_pods`); else every pod is in its first minute."""
        if kube_proxy not in KUBE_PROXY_MODES:
            raise ValueError(f"kube_proxy must be one of {KUBE_PROXY_MODES}, not {kube_proxy!r}")
        self.mullvad = mullvad
        self.kube_proxy = kube_proxy
        self.rp_filter = rp_filter
        self.br_nf = br_nf
        self.settled = settled
        self.uid = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.ns: dict[str, Netns] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.uid}-"))
        self.tunnel_up = False
        self.tunnel = TUNNEL  # the addresses Mullvad's table is built for
        self.hostport_ips: list[str] = []
        self.excluded_cgroup: Path | None = None  # Mullvad's split-tunnel cgroup (build)
        self._markers: list[socket.socket] = []
        self._barrier_lock = threading.Lock()
        self._barrier_count = 0
        self.roles = ROLES if container_node else tuple(r for r in ROLES if r != "node")

    def __getitem__(self, role: str) -> Netns:
        return self.ns[role]

    # --- building --------------------------------------------------------------------

    @contextlib.contextmanager
    def built(self, *, extra_agents: dict[str, dict[str, Any]] | None = None) -> Iterator[Lab]:
        """The lab built, then destroyed whatever happens. A failed cleanup raises
        LabError (namespaces or cgroups left behind would meet later labs), or is noted
        on the error already on its way."""
        try:
            self.build(extra_agents=extra_agents)
            yield self
        except BaseException as exc:
            if errors := self.destroy():
                exc.add_note(f"cleanup of {self.uid} failed: {errors}")
            raise
        if errors := self.destroy():
            raise LabError(f"cleanup of {self.uid} failed: {errors}")

    def build(self, *, extra_agents: dict[str, dict[str, Any]] | None = None) -> None:
        """Namespaces, links, addresses, CNI, kube-proxy, counters, Mullvad, servers."""
        spaces = create_namespaces([f"{self.uid}-{r}" for r in self.roles])
        self.ns = dict(zip(self.roles, spaces, strict=True))
        base = {
            "net.ipv6.conf.all.accept_dad": 0,
            "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.disable_ipv6": 0,
            "net.ipv6.conf.default.disable_ipv6": 0,
            # A day between router reachability probes (RFC 4191; 60 s by default): the
            # lab is a pod in its first minute, always. With LAN sharing off a pod's only
            # way to resolve its IPv6 gateway is that probe (sent from its link-local
            # address, which Mullvad's input chain accepts; its own solicitations come
            # from its ULA address, which it drops: probes.nd). Left at 60 s, labs living
            # longer (the mutation sweep's) saw pods' IPv6 start working mid-run.
            "net.ipv6.conf.default.router_probe_interval": ROUTER_PROBE_INTERVAL,
        }
        for role, ns in self.ns.items():
            extra: dict[str, str | int] = {}
            if role == "host":
                extra = {
                    "net.ipv4.ip_forward": 1,
                    "net.ipv6.conf.all.forwarding": 1,
                    "net.ipv4.conf.all.rp_filter": self.rp_filter,
                    "net.ipv4.conf.default.rp_filter": self.rp_filter,
                    "net.bridge.bridge-nf-call-iptables": int(self.br_nf),
                    "net.bridge.bridge-nf-call-ip6tables": int(self.br_nf),
                }
            if role == "lan":
                # ARP from the router's own address, as a real router does for forwarded
                # packets; the host's arp_ignore=2 (set by Mullvad) ignores other senders.
                # Its LAN bridge is a plain switch: no netfilter on bridged frames.
                # Non-local bind: it also plays the LAN host that spoofs a pod source.
                extra = {
                    "net.ipv4.ip_nonlocal_bind": 1,
                    "net.ipv6.ip_nonlocal_bind": 1,
                    "net.ipv4.conf.all.arp_announce": 2,
                    "net.bridge.bridge-nf-call-iptables": 0,
                    "net.bridge.bridge-nf-call-ip6tables": 0,
                }
            ns.sysctl({**base, **extra})
        self._links()
        non_cluster_links(self["host"], self.ns)
        self["host"].nft(cni_masquerade_rules())
        self["vpn"].nft(counter_rules("tun0"))
        self["lan"].nft(counter_rules("lanbr"))
        self["web"].nft(receiver_rules(SPOOF_RECEIVERS["web"], SPOOF_PORT, 0))
        self["coredns"].nft(receiver_rules(SPOOF_RECEIVERS["coredns"], 53, 0))
        self["host"].nft(receiver_rules(SPOOF_RECEIVERS["host"], SPOOF_PORT, 100))
        self._hostport_pod()
        build_inbound(self)
        self._kube_proxy()  # after portmap: its iptables chains must survive kube-proxy's
        if "node" in self.ns:
            for f in FAMILIES:  # Docker appends its jumps; kube-proxy's are inserted first
                binary = "iptables" if f.v == 4 else "ip6tables"
                host = self["host"]
                host.exec(f"{binary}-restore", "-w", "--noflush", stdin=docker_published(f))
        # Servers first: a lab that starts blocked has no tunnel (nor 10.64.0.1) left.
        self._start_agents(extra_agents or {})
        self._split_tunnel_cgroup()
        self["host"].nft(MARKER_TABLE)
        self._markers = [self[role].call(_marker_receiver) for role in ("lan", "vpn")]
        self.set_mullvad(self.mullvad, initial=True)
        if self.settled:
            self._settle_pods()

    def _split_tunnel_cgroup(self) -> None:
        """Mullvad's split-tunnel cgroup as the app makes it without its `cgroup2` feature
        (notes 1.3-2): the v1 net_cls controller, a cgroup whose net_cls.classid is
        NET_CLS_CLASSID, which Mullvad's `meta cgroup` rule marks. Mounted in the lab's
        directory (the hierarchy is the machine's, shared with any other mount of it), one
        cgroup per lab; removed by `destroy`. A process joins it before it opens a socket
        (agent.py connect), as `mullvad-exclude` does before it runs the program."""
        mnt = self.tmp / "net_cls"
        mnt.mkdir()
        run(["mount", "-t", "cgroup", "-o", "net_cls", "net_cls", str(mnt)])
        group = mnt / f"{self.uid}-mullvad-exclusions"
        group.mkdir()
        (group / "net_cls.classid").write_text(f"{mullvad_emu.NET_CLS_CLASSID}\n")
        self.excluded_cgroup = group

    def _links(self) -> None:
        host = self["host"]
        lines = [
            "link set lo up",
            # A fixed MAC: a bridge takes its lowest port MAC otherwise, and the CNI
            # bridge plugin adds a port (see cni.py).
            "link add cni0 address 02:00:00:00:0c:00 type bridge mcast_snooping 0",
            f"link add eth0 address {HOST_ETH0_MAC} type veth"
            f" peer name lan0 netns {self['lan'].name}",
        ]
        for role in POD_ROLES:
            lines.append(f"link add veth-{role} type veth peer name eth0 netns {self[role].name}")
            lines.append(f"link set veth-{role} master cni0 up")
        node = "node" in self.ns
        if node:
            lines += [
                f"link add {NODE_BRIDGE} type bridge mcast_snooping 0",
                f"link add veth-node type veth peer name eth0 netns {self['node'].name}",
                f"link set veth-node master {NODE_BRIDGE} up",
                f"link set {NODE_BRIDGE} up",
            ]
        lines += [
            "link set eth0 up",
            "link set cni0 up",
        ]
        for f in FAMILIES:
            lines += [
                f"addr add {f.host_lan}/{f.plen_lan} dev eth0 nodad"
                if f.v == 6
                else f"addr add {f.host_lan}/{f.plen_lan} dev eth0",
                f"addr add {f.cni_gw}/{f.pod_cidr.split('/')[1]} dev cni0"
                + (" nodad" if f.v == 6 else ""),
                f"route add default via {f.router} dev eth0",
            ]
            if node:
                nodad = " nodad" if f.v == 6 else ""
                lines.append(
                    f"addr add {f.node_gw}/{f.node_net.split('/')[1]} dev {NODE_BRIDGE}{nodad}"
                )
        host.ip("\n".join(lines) + "\n")

        lan = [
            "link set lo up",
            "link add lanbr type bridge mcast_snooping 0",
            "link set lan0 master lanbr up",
            f"link add veth-lanclient type veth peer name eth0 netns {self['lanclient'].name}",
            "link set veth-lanclient master lanbr up",
            "link set lanbr up",
        ]
        lanclient = ["link set lo up", "link set eth0 up"]
        vpn = ["link set lo up"]
        for f in FAMILIES:
            nodad = " nodad" if f.v == 6 else ""
            host_plen = 32 if f.v == 4 else 128
            lan += [
                f"addr add {f.router}/{f.plen_lan} dev lanbr{nodad}",
                f"addr add {f.remote}/{host_plen} dev lo{nodad}",
                f"addr add {f.internet}/{host_plen} dev lo{nodad}",
                f"addr add {f.outside_dns_pod}/{host_plen} dev lo{nodad}",
                f"addr add {f.outside_dns_host}/{host_plen} dev lo{nodad}",
                # The LoadBalancer IP is routed to the node (MetalLB-style announcement),
                # and so are the cluster ranges, which a spoofing LAN host aims at.
                f"route add {f.lb_ip} via {f.host_lan}",
                f"route add {f.cluster_pod_cidr} via {f.host_lan}",
                f"route add {f.svc_cidr} via {f.host_lan}",
                f"neigh replace {f.host_lan} lladdr {HOST_ETH0_MAC} dev lanbr nud permanent",
            ]
            lanclient += [
                f"addr add {f.lan_client}/{f.plen_lan} dev eth0{nodad}",
                f"route add {f.lb_ip} via {f.host_lan}",
                f"route add default via {f.router}",
                # so a LAN attacker can aim at the tunnel address (CVE-2019-14899 probe)
                f"route add {f.tun_host} via {f.host_lan}",
            ]
            vpn += [
                f"addr add {f.internet}/{host_plen} dev lo{nodad}",
                f"addr add {f.outside_dns_pod}/{host_plen} dev lo{nodad}",
                f"addr add {f.outside_dns_host}/{host_plen} dev lo{nodad}",
            ]
        self["lan"].ip("\n".join(lan) + "\n")
        self["lanclient"].ip("\n".join(lanclient) + "\n")
        self["vpn"].ip("\n".join(vpn) + "\n")
        self._tunnel()
        for role, attr in POD_ROLES.items():
            pod = ["link set lo up", "link set eth0 up"]
            for f in FAMILIES:
                nodad = " nodad" if f.v == 6 else ""
                pod += [
                    f"addr add {getattr(f, attr)}/{f.pod_cidr.split('/')[1]} dev eth0{nodad}",
                    f"route add default via {f.cni_gw}",
                ]
            self[role].ip("\n".join(pod) + "\n")
        if "node" in self.ns:
            lines = ["link set lo up", "link set eth0 up"]
            for f in FAMILIES:
                nodad = " nodad" if f.v == 6 else ""
                lines += [
                    f"addr add {f.node}/{f.node_net.split('/')[1]} dev eth0{nodad}",
                    f"route add default via {f.node_gw}",
                ]
            self["node"].ip("\n".join(lines) + "\n")

    def _settle_pods(self) -> None:
        """What a minute does to a pod with LAN sharing off: its kernel's router
        reachability probe (RFC 4191, rt6_probe on a route lookup, at most once every
        router_probe_interval) solicits the IPv6 gateway from the pod's link-local
        address, which Mullvad's input chain accepts, and the gateway becomes REACHABLE;
        later probes of the entry come from that address too, so it stays. The interval
        is 0 here until it has happened (the kernel's own mechanism, not a pinned entry),
        then a day again."""
        f = V6
        for role in POD_ROLES:
            pod, key = self[role], "net.ipv6.conf.eth0.router_probe_interval"
            pod.sysctl({key: 0})
            deadline = time.monotonic() + 5
            while True:
                # A datagram to the gateway makes its neighbour entry (INCOMPLETE: the
                # pod's own solicitation, from its ULA address, is dropped), which the
                # advertisement answering the probe completes (one with no entry to
                # complete is ignored); a route lookup runs the probe.
                pod.call(functools.partial(_datagram, f.cni_gw, 9))
                pod.exec("ip", "-6", "route", "get", f.internet)
                time.sleep(0.05)
                out = pod.exec("ip", "-6", "neigh", "show", f.cni_gw, "dev", "eth0").stdout
                if "REACHABLE" in out:
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"{role}: gateway {f.cni_gw} not learned: {out.strip()}")
            pod.sysctl({key: ROUTER_PROBE_INTERVAL})

    def _tunnel(self) -> None:
        """The tunnel device with its addresses (`self.tunnel`), and the relay side's
        end: made when the lab is built and again when Mullvad reconnects."""
        mac = "02:00:6d:6f:6c:65"
        host = [
            f"link add {mullvad_emu.TUNNEL} address {mac} type veth"
            f" peer name tun0 address {mac} netns {self['vpn'].name}",
            f"link set {mullvad_emu.TUNNEL} arp off up",
        ]
        vpn = ["link set tun0 arp off up"]
        for f in FAMILIES:
            nodad = " nodad" if f.v == 6 else ""
            plen = 32 if f.v == 4 else 128
            tun_host = self.tunnel.ips[0 if f.v == 4 else 1]
            host.append(f"addr add {tun_host}/{plen} dev {mullvad_emu.TUNNEL}{nodad}")
            vpn += [f"addr add {f.tun_gw}/{plen} dev tun0{nodad}", f"route add {tun_host} dev tun0"]
        self["host"].ip("\n".join(host) + "\n")
        self["vpn"].ip("\n".join(vpn) + "\n")
        self.tunnel_up = True

    def _hostport_pod(self) -> None:
        """ADD the hostport pod through bridge -> host-local -> portmap, as a runtime does."""
        conf = cni.conflist(
            "cni0",
            [cni.lab_range(f.pod_cidr, f.cni_gw) for f in FAMILIES],
            data_dir=self.tmp / "ipam",
        )
        mapping = [cni.PortMapping(HOSTPORT, WEB_PORT, "tcp"), *inbound_hostports()]
        result = cni.add(self["host"], self["hostport"], "hostport", conf, mapping)
        self.hostport_ips = cni.pod_addresses(result)

    def _kube_proxy(self) -> None:
        """kube-proxy's rules in the lab's mode, loaded the way kube-proxy loads them."""
        host = self["host"]
        if self.kube_proxy == "nftables":
            host.nft(kube_proxy_nft())
            return

        # As a sync does: EnsureChain/EnsureRule for the jumps, then `--noflush` restore.
        def ensure() -> None:  # in a thread inside the namespace: its children are too
            def run(argv: list[str]) -> int:
                return subprocess.run(argv, capture_output=True, check=False).returncode

            for f in FAMILIES:
                kube_proxy.ensure_iptables_jumps(f.v, run)

        host.call(ensure)
        for f in FAMILIES:
            binary = "iptables" if f.v == 4 else "ip6tables"
            host.exec(f"{binary}-restore", "-w", "--noflush", stdin=kube_proxy_iptables(f))

    def _start_agents(self, extra: dict[str, dict[str, Any]]) -> None:
        def dns(who: str, addrs: list[str], ports: tuple[int, ...] = (53,)) -> dict[str, Any]:
            return {"addrs": addrs, "ports": list(ports), "answers": ANSWERS[who]}

        inet_ports = (
            INET_HOST,
            INET_HOST_SPORT,
            INET_POD,
            INET_EXT_POD,
            INET_EXT_HOST,
            INET_EXT_EXCLUDED,
        )
        specs: dict[str, dict[str, Any]] = {
            "coredns": {
                "ident": "coredns",
                "dns": [dns("coredns", [V4.dns_pod, V6.dns_pod], (53, DNS_ALT_PORT))],
            },
            "web": {"ident": "web", "tcp": [["::", WEB_PORT]]},
            "hostport": {"ident": "hostport", "tcp": [["::", WEB_PORT]]},
            "host": {
                "ident": "host",
                "tcp": [["::", API_PORT], ["::", HOST_EPHEMERAL_PORT], ["::", HOST_SERVICE_PORT]],
            },
            "lan": {
                "ident": "lan",
                "tcp": [[f.internet, p] for f in FAMILIES for p in inet_ports],
                "dns": [
                    dns(
                        "outside-lan",
                        [a for f in FAMILIES for a in (f.outside_dns_pod, f.outside_dns_host)],
                    )
                ],
            },
            "lanclient": {"ident": "lanclient", "tcp": [["::", LAN_SERVICE_PORT]]},
            **{b.role: {"ident": b.role, "tcp": [["::", WEB_PORT]]} for b in NON_CLUSTER_BRIDGES},
            "vpn": {
                "ident": "vpn",
                "tcp": [[f.internet, p] for f in FAMILIES for p in inet_ports],
                "dns": [
                    dns("tunnel", [V4.tun_gw, V6.tun_gw]),
                    dns(
                        "outside-vpn",
                        [a for f in FAMILIES for a in (f.outside_dns_pod, f.outside_dns_host)],
                    ),
                ],
            },
        }
        if "node" in self.ns:
            specs["node"] = {"ident": "node", "tcp": [["::", NODE_SERVICE_PORT]]}
        for role, spec in extra.items():
            specs.setdefault(role, {"ident": role}).update(spec)
        procs = [self[role].spawn_agent(json.dumps(spec)) for role, spec in specs.items()]
        wait_ready(procs)

    # --- Mullvad ---------------------------------------------------------------------

    def set_mullvad(self, st: MullvadState, *, initial: bool = False) -> None:
        """Put the emulated app into state `st`, as the app does on a state change.

        Leaving Connected removes both policy-routing rules and the tunnel device;
        coming back (a reconnect) makes the tunnel again, with `self.tunnel`'s
        addresses, and its routes and rules. Then the table is replaced atomically.
        """
        host = self["host"]
        if st.state == "connected":
            if initial or self.mullvad.state != "connected":
                if not self.tunnel_up:
                    self._tunnel()
                v4, v6 = mullvad_emu.routing_up(self.tunnel.dns)
                host.ip(v4, family="-4")
                host.ip(v6, family="-6")
        elif initial or self.mullvad.state == "connected":
            if not initial:
                host.ip(mullvad_emu.routing_down(), family="-4")
                host.ip(mullvad_emu.routing_down(), family="-6")
            host.ip(f"link del {mullvad_emu.TUNNEL}\n")
            self.tunnel_up = False
        cfg = mullvad_emu.kernel_config(st)
        if cfg:
            host.sysctl(cfg)
        host.nft(mullvad_emu.ruleset(st, self.tunnel))
        self.mullvad = st

    def set_rp_filter(self, value: int) -> None:
        """The machine's rp_filter on every interface it has now and on new ones (the
        kernel applies the larger of `all` and the interface's own value)."""

        def write() -> None:
            for conf in Path("/proc/sys/net/ipv4/conf").iterdir():
                (conf / "rp_filter").write_text(f"{value}\n")

        self["host"].call(write)
        self.rp_filter = value

    def set_br_nf(self, on: bool) -> None:
        """br_netfilter's calls of the inet hooks for bridged IPv4 and IPv6 on or off."""
        self["host"].sysctl(
            {
                "net.bridge.bridge-nf-call-iptables": int(on),
                "net.bridge.bridge-nf-call-ip6tables": int(on),
            }
        )
        self.br_nf = on

    # --- observation -----------------------------------------------------------------

    def counters(self, table: str = "netlab_counters") -> dict[str, tuple[int, int]]:
        """watch name -> (packets into the tunnel, packets onto the LAN)."""
        tun, lan = read_counters(self["vpn"], table), read_counters(self["lan"], table)
        return {name: (tun[name], lan.get(name, 0)) for name in tun}

    def reset_counters(self, table: str = "netlab_counters") -> None:
        """The relay's and the LAN router's counters of `table` back to 0 (a new cell)."""
        for role in ("vpn", "lan"):
            self[role].exec("nft", "reset", "counters", "table", "inet", table)

    def barrier(self, hops: int = 2) -> None:
        """Return once every packet the lab's namespaces handed to the kernel before
        the call has gone `hops` namespaces further, or was dropped: instead of a sleep
        before counters are read.

        veth hands a packet to the next namespace through the backlog of the CPU that
        sends it, and each CPU works its backlog in order, packets and whatever they
        make (a forwarded copy, a SYN-ACK, an ICMP error) queued behind. So a marker
        datagram sent on each CPU in turn after the call is handled after what that CPU
        had queued, and its next hop after their next one: one round, client pod ->
        machine -> LAN router or relay, covers two hops. A marker is a DHCP server's
        answer (MARKER_SPORT -> MARKER_DPORT), which Mullvad's forward chain accepts in
        every state and no table of ours or the tests' touches; it goes to the internet
        server's address, which both the LAN router and the relay have (Mullvad's
        routing picks the way), and is taken there by a socket of `build`. Userland
        senders (the lab's servers) are not covered: wait for their answers first.
        """
        with self._barrier_lock:
            for _ in range(max(1, -(-hops // 2))):
                self._barrier_count += 1
                want = set()
                for cpu in sorted(os.sched_getaffinity(0)):
                    token = f"{self.uid}-{self._barrier_count}-{cpu}".encode()
                    self["client"].call(functools.partial(_send_marker, cpu, token))
                    want.add(token)
                deadline = time.monotonic() + 10
                while want:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LabError(f"barrier markers {sorted(want)} never arrived")
                    ready, _, _ = select.select(self._markers, [], [], left)
                    for sock in ready:
                        with contextlib.suppress(BlockingIOError):
                            while True:
                                want.discard(sock.recv(256))

    def snapshot(self) -> str:
        """Host ruleset, rules and routes, kept for failure messages."""
        host = self["host"]
        parts = [
            host.exec("nft", "list", "ruleset", check=False).stdout,
            host.exec("ip", "rule", check=False).stdout,
            host.exec("ip", "-6", "rule", check=False).stdout,
        ]
        return "\n".join(parts)

    def destroy(self) -> list[str]:
        for sock in self._markers:
            sock.close()
        errors = delete_namespaces(list(self.ns.values()))
        errors += remove_cgroup_mount(self.tmp / "net_cls", lambda n: n.startswith(self.uid))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return errors


def _marker_receiver() -> socket.socket:
    """In the LAN router's or the relay's namespace: the socket Lab.barrier's markers
    arrive at."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((V4.internet, MARKER_DPORT))
    sock.setblocking(False)
    return sock


def _send_marker(cpu: int, token: bytes) -> None:
    """In the client pod's namespace, on CPU `cpu`: one marker of Lab.barrier."""
    os.sched_setaffinity(0, {cpu})  # this thread only: Netns.call made it for us
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((V4.client_pod, MARKER_SPORT))
        sock.sendto(token, (V4.internet, MARKER_DPORT))
