"""kube_proxy.py's rules load where kube-proxy's load, and move packets as kube-proxy's do.

A tiny topology of its own (not the Mullvad lab), three namespaces:

    ext 192.168.50.2 ---- eth0 192.168.50.1  node  10.244.0.1 veth-pod ---- pod 10.244.0.3
        fd00:50::2             fd00:50::1          fd00:10:244::1              :8080 (TCP)

`ext` is an off-cluster client routed to the node for the service and load-balancer
ranges (MetalLB style: the LB IPs are not configured on the node). The pod's server
answers with the client address it saw. Each mode (iptables-restore with the nft
backend, and nft) is loaded into `node` in turn, for IPv4 and IPv6.

Finding on the masquerade bit (asserted by `test_premarked_first_packet_is_masqueraded`):
Mullvad's fwmark 0x6d6f6c65 has bit 14 set (0x6c65 = 0b0110_1100_0110_0101), and bit 14
is kube-proxy's masquerade mark 0x4000. kube-proxy's postrouting masquerade looks at
that bit only (iptables: `KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`,
then `MARK --xor-mark 0x4000` and `MASQUERADE --random-fully`; nftables: `masquerading`
chain `mark and 0x4000 == 0 return`, `mark set mark xor 0x4000`, `masquerade
fully-random`). So a connection whose first packet reaches postrouting already carrying
meta mark 0x6d6f6c65 (e.g. set by a bypass table in prerouting at -150, before kube-proxy's
DNAT at -100) is masqueraded even for externalTrafficPolicy=Local: the endpoint sees the
node's pod-network address (10.244.0.1 / fd00:10:244::1) instead of the client, exactly
as for externalTrafficPolicy=Cluster; the packet leaves with mark 0x6d6f2c65. The same
holds for packets the host sends from a socket with SO_MARK 0x6d6f6c65 (how Mullvad's
WireGuard socket is marked): they are masqueraded with a fully random source port.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import kube_proxy
from .kube_proxy import Service
from .nsutil import Netns, create_namespaces, delete_namespaces, wait_ready
from .probes import tcp_connect
from .topology import PREFIX

FWMARK = 0x6D6F6C65  # Mullvad's TUNNEL_FWMARK ("mole")
WEB_PORT = 8080
NP_CLUSTER, NP_LOCAL = 30080, 30081
WG_SPORT = 51820


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, nftables)"
    missing = [
        t for t in ("ip", "nft", "iptables-restore", "ip6tables-restore") if not shutil.which(t)
    ]
    if missing:
        return f"needs {', '.join(missing)} (Debian: apt-get install iptables nftables iproute2)"
    version = subprocess.run(
        ["iptables-restore", "--version"], capture_output=True, text=True, check=False
    ).stdout
    if "nf_tables" not in version:
        return f"iptables-restore is not the nft backend: {version.strip()!r}"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


@dataclass(frozen=True)
class Addrs:
    v: int
    node: str
    ext: str
    gw: str  # the node on the pod network: what a masqueraded flow shows
    pod: str
    cluster_cidr: str
    svc_cidr: str
    svc: str
    svc_local: str
    lb: str
    lb_local: str
    plen: int
    lb_net: str


A4 = Addrs(
    4, "192.168.50.1", "192.168.50.2", "10.244.0.1", "10.244.0.3", "10.244.0.0/16",
    "10.96.0.0/12", "10.96.0.20", "10.96.0.21", "198.51.100.200", "198.51.100.201", 24,
    "198.51.100.0/24",
)  # fmt: skip
A6 = Addrs(
    6, "fd00:50::1", "fd00:50::2", "fd00:10:244::1", "fd00:10:244::3", "fd00:10:244::/56",
    "fd00:10:96::/112", "fd00:10:96::14", "fd00:10:96::15", "2001:db8:200::1",
    "2001:db8:200::2", 64, "2001:db8:200::/64",
)  # fmt: skip
FAMS = {4: A4, 6: A6}


def services() -> list[Service]:
    """One Cluster and one Local service per family, both NodePort + LoadBalancer."""
    out = []
    for a in (A4, A6):
        ep = ((a.pod, WEB_PORT),)
        out += [
            Service("default", f"web{a.v}", "http", "tcp", a.svc, 80, ep, NP_CLUSTER, (a.lb,)),
            Service(
                "default",
                f"web{a.v}-local",
                "http",
                "tcp",
                a.svc_local,
                80,
                ep,
                NP_LOCAL,
                (a.lb_local,),
                local_traffic=True,
            ),
        ]
    return out


CIDRS = [A4.cluster_cidr, A6.cluster_cidr]


def iptables_texts() -> dict[int, str]:
    return {v: kube_proxy.iptables_restore(services(), v, FAMS[v].cluster_cidr) for v in (4, 6)}


def nft_text() -> str:
    return kube_proxy.nftables(services(), CIDRS, service_cidrs=[A4.svc_cidr, A6.svc_cidr])


class Topo:
    def __init__(self) -> None:
        uid = f"{PREFIX}{os.getpid()}-kp{secrets.token_hex(2)}"
        self.node, self.pod, self.ext = create_namespaces(
            [f"{uid}-{r}" for r in ("node", "pod", "ext")]
        )

    def build(self) -> None:
        base: dict[str, str | int] = {
            "net.ipv6.conf.all.accept_dad": 0,
            "net.ipv6.conf.default.accept_dad": 0,
        }
        for ns in (self.node, self.pod, self.ext):
            ns.sysctl(base)
        self.node.sysctl({"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        node = [
            "link set lo up",
            f"link add eth0 type veth peer name eth0 netns {self.ext.name}",
            f"link add veth-pod type veth peer name eth0 netns {self.pod.name}",
            "link set eth0 up",
            "link set veth-pod up",
        ]
        pod = ["link set lo up", "link set eth0 up"]
        ext = ["link set lo up", "link set eth0 up"]
        for a in (A4, A6):
            nodad = " nodad" if a.v == 6 else ""
            pod_plen = 24 if a.v == 4 else 64
            node += [
                f"addr add {a.node}/{a.plen} dev eth0{nodad}",
                f"addr add {a.gw}/{pod_plen} dev veth-pod{nodad}",
                f"route add default via {a.ext}",  # so the host can route to ClusterIPs
            ]
            pod += [f"addr add {a.pod}/{pod_plen} dev eth0{nodad}", f"route add default via {a.gw}"]
            ext += [
                f"addr add {a.ext}/{a.plen} dev eth0{nodad}",
                f"route add {a.svc_cidr} via {a.node}",
                f"route add {a.lb_net} via {a.node}",
            ]
        self.node.ip("\n".join(node) + "\n")
        self.pod.ip("\n".join(pod) + "\n")
        self.ext.ip("\n".join(ext) + "\n")
        spec = json.dumps({"ident": "web", "tcp": [[a.pod, WEB_PORT] for a in (A4, A6)]})
        wait_ready([self.pod.spawn_agent(spec)])

    def destroy(self) -> list[str]:
        return delete_namespaces([self.node, self.pod, self.ext])

    def reset(self) -> None:
        self.node.exec("nft", "flush", "ruleset")

    def load(self, mode: str) -> None:
        self.reset()
        if mode == "iptables":
            for v, text in iptables_texts().items():
                self.node.exec("iptables-restore" if v == 4 else "ip6tables-restore", stdin=text)
        else:
            self.node.nft(nft_text())

    def seen(self, client: Netns, dst: str, port: int) -> str:
        """The source address the pod's server saw (or why the connection failed)."""
        out = client.call(lambda: tcp_connect(dst, port))
        assert out.ok, f"{client.name} -> {dst}:{port}: {out.detail}"
        assert out.ident == "web"
        return out.peer or ""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    t = Topo()
    try:
        t.build()
        yield t
    finally:
        errors = t.destroy()
        assert not errors, errors


# --- the text itself ------------------------------------------------------------------


def test_chain_names_hash_as_upstream() -> None:
    """Names from the expected dumps of kubernetes' proxier_test.go (iptables, nftables)."""
    svc = Service("ns1", "svc1", "p80", "tcp", "172.30.0.41", 80, (("10.180.0.1", 80),))
    assert kube_proxy.ipt_service_chains(svc)["SVC"] == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert kube_proxy.nft_service_chains(svc)["service"] == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        kube_proxy.nft_endpoint_chain(svc, ("10.180.0.1", 80))
        == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert kube_proxy.MASQ_MARK == "0x00004000"
    assert FWMARK & 0x4000, "Mullvad's fwmark has kube-proxy's masquerade bit"


def test_random_endpoint_selection_as_upstream() -> None:
    """nftables always uses numgen (also `mod 1`); iptables leaves the last (or only)
    endpoint without a statistic match, as writeServiceToEndpointRules does."""
    one = Service("a", "one", "", "udp", "10.96.0.5", 53, (("10.244.0.4", 53),))
    two = Service("a", "two", "", "tcp", "10.96.0.6", 80, (("10.244.0.3", 80), ("10.244.0.5", 80)))
    nft = kube_proxy.nftables([one, two], ["10.244.0.0/16"])
    assert "numgen random mod 1 vmap { 0 : goto endpoint-" in nft
    assert "numgen random mod 2 vmap { 0 : goto endpoint-" in nft
    ipt = kube_proxy.iptables_restore([one, two], 4, "10.244.0.0/16")
    assert ipt.count("-m statistic --mode random --probability 0.5000000000") == 1
    assert "--probability 1.0" not in ipt


# --- loading --------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_iptables_restore_accepts_and_is_idempotent(topo: Topo, family: int) -> None:
    topo.reset()
    restore, save = (
        ("iptables-restore", "iptables-save")
        if family == 4
        else ("ip6tables-restore", "ip6tables-save")
    )
    text = iptables_texts()[family]
    topo.node.exec(restore, stdin=text)
    first = topo.node.exec(save).stdout
    topo.node.exec(restore, stdin=text)
    second = topo.node.exec(save).stdout

    def body(dump: str) -> list[str]:  # without comments and chain counters
        return [re.sub(r" \[\d+:\d+\]$", "", x) for x in dump.splitlines() if x[:1] != "#"]

    assert body(first) == body(second)
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                  "KUBE-FORWARD", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL"):  # fmt: skip
        assert f":{chain} " in first
    assert (
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in first
    )


@pytest.mark.parametrize("family", [4, 6])
def test_iptables_noflush_keeps_other_chains(topo: Topo, family: int) -> None:
    """kube-proxy's own way: `--noflush` restore of its chains plus EnsureRule jumps;
    re-applying adds no duplicate, and another user's nat chain (portmap's) survives."""
    topo.reset()
    binary = "iptables" if family == 4 else "ip6tables"
    a = FAMS[family]
    foreign = f"-A CNI-HOSTPORT-DNAT -d {a.node} -p tcp --dport 9 -j RETURN"
    topo.node.exec(
        f"{binary}-restore", stdin=f"*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n{foreign}\nCOMMIT\n"
    )

    def run(argv: list[str]) -> int:
        return topo.node.exec(*argv, check=False).returncode

    text = kube_proxy.iptables_restore(services(), family, a.cluster_cidr, noflush=True)
    for _ in range(2):
        topo.node.exec(f"{binary}-restore", "--noflush", stdin=text)
        kube_proxy.ensure_iptables_jumps(family, run)
    dump = topo.node.exec(f"{binary}-save").stdout
    assert [line for line in dump.splitlines() if line.startswith("-A CNI-HOSTPORT-DNAT")]
    jumps = [line for line in dump.splitlines() if line.startswith("-A PREROUTING")]
    assert jumps == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    ]
    assert topo.seen(topo.ext, a.lb, 80) == a.gw
    assert topo.seen(topo.ext, a.lb_local, 80) == a.ext


def test_nft_accepts_and_is_idempotent(topo: Topo) -> None:
    topo.reset()
    topo.node.nft(nft_text())
    first = topo.node.exec("nft", "list", "ruleset").stdout
    topo.node.nft(nft_text())
    assert topo.node.exec("nft", "list", "ruleset").stdout == first
    for ipx in ("ip", "ip6"):
        table = topo.node.exec("nft", "list", "table", ipx, "kube-proxy").stdout
        assert "type nat hook prerouting priority dstnat; policy accept;" in table
        assert "type nat hook postrouting priority srcnat; policy accept;" in table
        assert "map service-ips" in table and "set cluster-ips" in table
    topo.node.nft(kube_proxy.nft_delete())
    assert "kube-proxy" not in topo.node.exec("nft", "list", "tables").stdout


# --- traffic --------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_services_reach_the_endpoint(topo: Topo, mode: str, family: int) -> None:
    """ClusterIP (from the host and routed from outside), NodePort on a local address,
    LoadBalancer IP; masqueraded for Cluster policy, client kept for Local."""
    a = FAMS[family]
    topo.load(mode)
    seen = {
        "host -> ClusterIP": topo.seen(topo.node, a.svc, 80),
        "ext -> ClusterIP": topo.seen(topo.ext, a.svc, 80),
        "ext -> NodePort": topo.seen(topo.ext, a.node, NP_CLUSTER),
        "ext -> LB IP": topo.seen(topo.ext, a.lb, 80),
        "ext -> NodePort (Local)": topo.seen(topo.ext, a.node, NP_LOCAL),
        "ext -> LB IP (Local)": topo.seen(topo.ext, a.lb_local, 80),
    }
    assert seen == {
        "host -> ClusterIP": a.gw,  # off-cluster source (--cluster-cidr): masqueraded
        "ext -> ClusterIP": a.gw,
        "ext -> NodePort": a.gw,  # externalTrafficPolicy=Cluster: masqueraded
        "ext -> LB IP": a.gw,
        "ext -> NodePort (Local)": a.ext,  # externalTrafficPolicy=Local: client kept
        "ext -> LB IP (Local)": a.ext,
    }


def _premark(a: Addrs) -> str:
    """A bypass-like table: mark the client's packets with Mullvad's fwmark at -150."""
    ipx = "ip" if a.v == 4 else "ip6"
    return (
        "table inet netlab_premark\ndelete table inet netlab_premark\n"
        "table inet netlab_premark {\n\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority -150; policy accept;\n"
        f"\t\t{ipx} saddr {a.ext} meta mark set {FWMARK:#x}\n\t}}\n}}\n"
    )


def _udp_sport(topo: Topo, a: Addrs, mark: int) -> int:
    """Send from a host socket bound to :51820 (SO_MARK `mark`); the port ext sees."""
    fam = socket.AF_INET if a.v == 4 else socket.AF_INET6

    def server() -> socket.socket:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((a.ext, 0))
        return s

    def client() -> socket.socket:
        c = socket.socket(fam, socket.SOCK_DGRAM)
        if mark:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        c.bind((a.node, WG_SPORT))
        return c

    srv = topo.ext.call(server)
    cli = topo.node.call(client)
    with srv, cli:
        srv.settimeout(2)
        cli.sendto(b"handshake", srv.getsockname()[:2])
        _, peer = srv.recvfrom(64)
    return int(peer[1])


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_premarked_first_packet_is_masqueraded(topo: Topo, mode: str, family: int) -> None:
    """A first packet already carrying 0x6d6f6c65 (bit 0x4000) is masqueraded by
    KUBE-POSTROUTING / `masquerading`, also for externalTrafficPolicy=Local."""
    a = FAMS[family]
    topo.load(mode)
    assert topo.seen(topo.ext, a.lb_local, 80) == a.ext  # unmarked: client kept
    # The host's own packets: unmarked ones keep their source port; marked ones (Mullvad
    # marks its WireGuard socket so) are masqueraded, with a fully random source port.
    assert _udp_sport(topo, a, 0) == WG_SPORT
    assert _udp_sport(topo, a, FWMARK) != WG_SPORT
    topo.node.nft(_premark(a))
    seen = {
        "LB IP (Local)": topo.seen(topo.ext, a.lb_local, 80),
        "NodePort (Local)": topo.seen(topo.ext, a.node, NP_LOCAL),
    }
    assert seen == {"LB IP (Local)": a.gw, "NodePort (Local)": a.gw}, (
        "kube-proxy masquerades every new flow whose mark has bit 0x4000, whatever "
        "the service's externalTrafficPolicy"
    )
