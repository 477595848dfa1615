"""Every check the lab makes, and what each scenario must show for it.

A probe is one connection attempt (TCP, or a DNS query over UDP or TCP) from a client
namespace, run in a thread that entered that namespace. Its expectation is a function
of the scenario, written out so that the same probe asserts success with the bypass
and failure without it: a probe whose expectation never says "blocked" for some
scenario could not fail, and `test_matrix.py` checks that none is like that.

Servers name themselves (banner line or fixed DNS answer), and nft counters in the
relay and LAN namespaces tell which way a reply or connection left the machine.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import agent
from .mullvad_emu import MullvadState
from .nsutil import AGENT, run
from .topology import (
    API_PORT,
    BR_NET,
    CLIENT_FIXED_SPORT,
    DOCKER0,
    DOCKER_SVC,
    EXT_EXCLUDED_PORT,
    FAMILIES,
    HOST_EPHEMERAL_PORT,
    HOST_SERVICE_PORT,
    HOSTPORT,
    HOSTPORT_UDP,
    IDENT_BY_ANSWER,
    INBOUND,
    INBOUND_RECEIVERS,
    INBOUND_RX,
    INET_HOST,
    INET_HOST_SPORT,
    INET_POD,
    LAN_SERVICE_PORT,
    LB_PORT,
    LOCAL_NODEPORT,
    LOCAL_SVC_PORT,
    NODEPORT,
    OFF_NODE_SVC,
    PUBLISHED_PORT,
    SPOOF_PAYLOAD,
    SPOOF_PORT,
    SPOOF_RECEIVERS,
    SVC_API_PORT,
    SVC_WEB_PORT,
    UDP_NODEPORT,
    WEB_PORT,
    Fam,
    Lab,
    watch_name,
)

TIMEOUT = 1.0  # client timeout: a blocked flow costs this much, once per scenario


@contextmanager
def timeout(seconds: float) -> Iterator[None]:
    """Clients started inside give up after `seconds` instead of TIMEOUT: for mutation
    checks, which run the same probes many times in a lab where an answer takes
    milliseconds (a probe slower than that in our table's runs is reported unstable)."""
    global TIMEOUT  # noqa: PLW0603 (read by every client at its start)
    saved, TIMEOUT = TIMEOUT, seconds
    try:
        yield
    finally:
        TIMEOUT = saved


@dataclass(frozen=True)
class Scenario:
    """Mullvad's state + which bypass is loaded (+ rp_filter, + when it was applied)
    + kube-proxy's mode."""

    mullvad: MullvadState
    bypass: str = "none"  # "none" | "generated" | "naive" (deliberately leaky)
    rp_filter: int = 2
    apply_in: str = "connected"  # state the bypass was applied in (then switched)
    kube_proxy: str = "iptables"  # "iptables" | "nftables" (topology.KUBE_PROXY_MODES)
    # NODE_NETWORKS of the generated table ("" : none). The lab has no node there, so
    # every probe must show what it shows without them: the node rules add nothing else.
    node_networks: str = ""
    # Pods more than a minute old: their IPv6 gateway learned by their kernel's router
    # probe, also with LAN sharing off (topology.Lab._settle_pods); else their first minute.
    settled: bool = False

    @property
    def id(self) -> str:
        parts = [self.mullvad.label, self.bypass]
        if self.node_networks:
            parts.append("nodes")
        if self.settled:
            parts.append("settled")
        if self.rp_filter != 2:
            parts.append(f"rp_filter{self.rp_filter}")
        if self.bypass != "none" and self.apply_in != self.mullvad.state:
            parts.append(f"applied_{self.apply_in}")
        parts.append(f"kp_{self.kube_proxy}")
        return "-".join(parts)

    @property
    def effective(self) -> bool:
        """Ct-mark bypasses only work while Mullvad's ct-mark accept rules exist."""
        return self.bypass != "none" and self.mullvad.split

    @property
    def connected(self) -> bool:
        return self.mullvad.state == "connected"

    @property
    def lan(self) -> bool:
        return self.mullvad.allow_lan


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str
    ident: str | None = None  # which server answered
    peer: str | None = None  # source address the TCP server saw


@dataclass(frozen=True)
class Expect:
    ok: bool
    ident: str | None = None
    # Counter check on the probe's watch: "lan" = left by the LAN only, "tunnel" = by
    # the tunnel only, "nowhere" = neither, "not_lan" = not by the LAN, None = unchecked.
    path: str | None = None
    # The source address the server must see (client addresses preserved), or None.
    peer: str | None = None

    def __str__(self) -> str:
        what = f"ok ({self.ident})" if self.ok else "blocked"
        return what + (f", path {self.path}" if self.path else "")


@dataclass(frozen=True)
class Probe:
    name: str
    fam: Fam
    client: str  # role of the namespace it runs in
    why: str
    run: Callable[[Lab], Outcome]
    expect: Callable[[Scenario], Expect]
    watch: str | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        return f"{self.name}_v{self.fam.v}"


# --- client operations (run inside a namespace) ---------------------------------------


def _fail(exc: BaseException) -> Outcome:
    if isinstance(exc, TimeoutError | socket.timeout):
        return Outcome(False, "timeout")
    if isinstance(exc, ConnectionRefusedError):
        return Outcome(False, "refused")
    if isinstance(exc, ConnectionResetError):
        return Outcome(False, "reset")
    if isinstance(exc, OSError):
        return Outcome(False, exc.strerror or repr(exc))
    return Outcome(False, repr(exc))


def tcp_connect(dst: str, port: int, *, src: str | None = None, sport: int = 0) -> Outcome:
    """Connect, read the server's banner line (`<ident> <peer address>`)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            if src is not None or sport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((src or ("::" if family == socket.AF_INET6 else "0.0.0.0"), sport))
            sock.connect((dst, port))
            line = sock.makefile("r").readline().strip()
    except (OSError, ValueError) as exc:
        return _fail(exc)
    if not line:
        return Outcome(False, "connected, but no banner")
    ident, _, peer = line.partition(" ")
    return Outcome(True, f"banner {line!r}", ident, peer)


def dns_query(server: str, port: int, proto: str) -> Outcome:
    """One A (or AAAA) query; the answer tells which resolver replied."""
    qtype = agent.QTYPE_AAAA if ":" in server else agent.QTYPE_A
    qid = abs(hash((server, port, proto))) & 0xFFFF
    msg = agent.build_query(qid, "probe.cluster.local", qtype)
    try:
        if proto == "udp":
            resp = agent.query_udp(server, port, msg, TIMEOUT)
        else:
            resp = agent.query_tcp(server, port, msg, TIMEOUT)
        addr = agent.parse_answer(resp, qid)
    except (OSError, ValueError, ConnectionError) as exc:
        return _fail(exc)
    who = IDENT_BY_ANSWER.get(addr, f"unknown {addr}")
    return Outcome(True, f"answer {addr} from {who}", who)


def spoofed_udp(lab: Lab, f: Fam, dst: str, port: int, receiver: str) -> Outcome:
    """A LAN host sends UDP from a pod address no pod has; count what the receiver got.

    Counted at the receiver (a pod, or the host after Mullvad's input chain), not by
    replies: a spoofer never sees replies, and a one-way packet is the whole attack.
    """

    lab["lan"].call(lambda: send_spoofed(f, dst, port, SPOOF_PAYLOAD))
    lab.barrier()  # LAN router -> machine -> pod
    name = watch_name(SPOOF_RECEIVERS[receiver], f)
    out = lab[receiver].exec("nft", "-j", "list", "counter", "inet", "netlab_rx", name).stdout
    packets = int(json.loads(out)["nftables"][1]["counter"]["packets"])
    return Outcome(packets > 0, f"{packets} of 3 spoofed packets delivered to {receiver}")


def excluded_tcp(lab: Lab, dst: str, port: int) -> Outcome:
    """`tcp_connect` from a process in Mullvad's split-tunnel cgroup on the machine (an
    app started with `mullvad-exclude`): a process of its own (agent.py connect), since
    moving a thread of this one would mark every socket the process holds."""
    assert lab.excluded_cgroup is not None, "the lab has no split-tunnel cgroup (build)"
    spec = {
        "cgroup_procs": str(lab.excluded_cgroup / "cgroup.procs"),
        "dst": dst,
        "port": port,
        "timeout": TIMEOUT,
    }
    argv = ["nsenter", f"--net={lab['host'].path}", sys.executable, "-I", str(AGENT)]
    proc = run([*argv, "connect", json.dumps(spec)], check=False)
    if proc.returncode != 0:
        return Outcome(False, f"agent.py connect failed: {proc.stderr.strip()}")
    return Outcome(**json.loads(proc.stdout))


def send_spoofed(f: Fam, dst: str, port: int, payload: bytes, count: int = 3) -> None:
    """Send `count` UDP datagrams from `f.spoof_pod` (run in the lan namespace)."""
    family = socket.AF_INET6 if f.v == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        # Non-local bind (allowed in the lan namespace) and IP_TRANSPARENT, without
        # which IPv4 refuses to route a packet from an address not configured here.
        level, opt = (socket.IPPROTO_IPV6, 75) if f.v == 6 else (socket.SOL_IP, 19)
        sock.setsockopt(level, opt, 1)  # IPV6_TRANSPARENT / IP_TRANSPARENT
        sock.bind((f.spoof_pod, 0))
        for _ in range(count):
            sock.sendto(payload, (dst, port))


# --- the probes -----------------------------------------------------------------------


def _tcp(client: str, dst: str, port: int, **kw: object) -> Callable[[Lab], Outcome]:
    return lambda lab: lab[client].call(lambda: tcp_connect(dst, port, **kw))  # type: ignore[arg-type]


def _dns(client: str, server: str, proto: str) -> Callable[[Lab], Outcome]:
    return lambda lab: lab[client].call(lambda: dns_query(server, 53, proto))


def _spoof(f: Fam, dst: str, port: int, receiver: str) -> Callable[[Lab], Outcome]:
    return lambda lab: spoofed_udp(lab, f, dst, port, receiver)


def ok_if(
    cond: bool,
    ident: str,
    path: str | None = None,
    else_path: str | None = None,
    peer: str | None = None,
) -> Expect:
    """Success (answered by `ident`, leaving by `path`, seen from `peer`) when `cond`."""
    return Expect(True, ident, path, peer) if cond else Expect(False, path=else_path)


def probes_for(f: Fam) -> list[Probe]:
    """All probes of one family."""

    def nd(s: Scenario) -> bool:
        """Can a LAN client resolve the host as its IPv6 neighbour (and a pod its gateway
        in its first minute)?

        They solicit the host from their own ULA address (RFC 4861 7.2.2: the source of
        the packet that prompted the solicitation), and Mullvad's input chain accepts
        neighbour solicitations only from fe80::/10 unless allow LAN is on. Neighbour
        discovery is not conntracked, so no ct-mark bypass can change that.
        """
        return f.v == 4 or s.lan

    def pod_nd(s: Scenario) -> bool:
        """Can a pod resolve its IPv6 gateway? As nd, until its kernel's router probe
        (from fe80::/10, at most once a minute) has: settled pods know it."""
        return nd(s) or s.settled

    def seen(s: Scenario, client: str, bridge: str = f.cni_gw) -> str:
        """Who a pod or node that nobody asked to masquerade (not kube-proxy, whose
        externalTrafficPolicy Cluster does) sees as the client: the client itself, also
        with the table (it keeps the source of such a connection for IPv4). IPv6 keeps
        Mullvad's masquerade of exempted flows to the bridge's address: with local network
        sharing off, a pod that sees the client could not resolve its gateway (Mullvad's
        input chain takes neighbour solicitations only from fe80::/10)."""
        return client if f.v == 4 or s.bypass == "none" else bridge

    def not_lan(s: Scenario) -> str | None:
        """Blocked with allow LAN, Mullvad itself sends private destinations to the LAN
        (no tunnel, so the main table's default route); elsewhere they must not go there."""
        return None if s.lan and not s.connected else "not_lan"

    def unassigned(s: Scenario) -> str | None:
        """kube-proxy's nftables mode, knowing the ServiceCIDRs, drops new flows to
        unallocated ClusterIPs (cluster-ips-check, in filter-forward and
        filter-output-post-dnat, ahead of Mullvad's chains): they leave by neither way,
        also where Mullvad itself would send them to the LAN. iptables mode has no such
        rule; there the bypass and Mullvad alone must keep them off the LAN."""
        return "nowhere" if s.kube_proxy == "nftables" else not_lan(s)

    def probe(
        name: str,
        client: str,
        why: str,
        run: Callable[[Lab], Outcome],
        expect: Callable[[Scenario], Expect],
        *,
        watch: str | None = None,
        leak: bool = False,
        tunnel_address: bool = False,
    ) -> Probe:
        tags = frozenset(
            tag for tag, on in (("leak", leak), ("tunnel_address", tunnel_address)) if on
        )
        return Probe(name, f, client, why, run, expect, watch, tags)

    dns_probes = [
        p
        for proto in ("udp", "tcp")
        for p in (
            probe(
                f"pod_svc_dns_{proto}",
                "client",
                "pod resolves through the cluster DNS service IP (CoreDNS path)",
                _dns("client", f.kube_dns, proto),
                lambda s: ok_if(pod_nd(s) and s.effective, "coredns"),
            ),
            probe(
                f"host_svc_dns_{proto}",
                "host",
                "the host itself (hostNetwork) queries the cluster DNS service IP",
                _dns("host", f.kube_dns, proto),
                lambda s: ok_if(s.effective, "coredns"),
            ),
            probe(
                f"pod_outside_dns_{proto}",
                "client",
                "pod DNS to an outside resolver stays blocked",
                _dns("client", f.outside_dns_pod, proto),
                lambda s: Expect(False, path="nowhere"),
                watch="pod_outside_dns",
                leak=True,
            ),
            probe(
                f"host_outside_dns_{proto}",
                "host",
                "host DNS to an outside resolver stays blocked",
                _dns("host", f.outside_dns_host, proto),
                lambda s: Expect(False, path="nowhere"),
                watch="host_outside_dns",
                leak=True,
            ),
        )
    ]
    works = [
        probe(
            "pod_pod_dns",
            "client",
            "pod -> CoreDNS pod IP across the bridge (br_netfilter)",
            _dns("client", f.dns_pod, "udp"),
            lambda s: ok_if(s.effective, "coredns"),
        ),
        probe(
            "host_pod_dns",
            "host",
            "host -> CoreDNS pod IP directly (hostNetwork pods, node-local caches)",
            _dns("host", f.dns_pod, "udp"),
            lambda s: ok_if(s.effective, "coredns"),
        ),
        probe(
            "pod_pod_tcp",
            "client",
            "pod -> pod TCP across the bridge; the server sees the client pod's address",
            _tcp("client", f.web_pod, WEB_PORT),
            lambda s: ok_if(s.effective or s.lan, "web", peer=f.client_pod),
        ),
        probe(
            "pod_svc_tcp",
            "client",
            "pod -> ClusterIP service (TCP); the endpoint sees the client pod's address",
            _tcp("client", f.web_svc, SVC_WEB_PORT),
            lambda s: ok_if(pod_nd(s) and (s.effective or s.lan), "web", peer=f.client_pod),
        ),
        probe(
            "pod_api_svc",
            "client",
            "pod -> kubernetes API service (DNAT to the node's address)",
            _tcp("client", f.api_svc, SVC_API_PORT),
            lambda s: ok_if(pod_nd(s) and (s.effective or s.lan), "host"),
        ),
        probe(
            "pod_node_ip",
            "client",
            "pod -> the node's LAN address (metrics-server -> kubelet, hostNetwork servers)",
            _tcp("client", f.host_lan, API_PORT),
            lambda s: ok_if(pod_nd(s) and (s.effective or s.lan), "host"),
        ),
        probe(
            "host_pod_tcp",
            "host",
            "host -> pod IP (kubelet probes, port-forward)",
            _tcp("host", f.web_pod, WEB_PORT),
            lambda s: ok_if(s.effective or s.lan, "web"),
        ),
        # Without the bypass but with allow LAN, the source of host -> ClusterIP is the
        # tunnel address (no main-table route), and the reply hits the CVE-2019-14899
        # drop (notes 1.6); in the blocked state there is no tunnel, so it works.
        probe(
            "host_svc_tcp",
            "host",
            "host -> ClusterIP service (TCP)",
            _tcp("host", f.web_svc, SVC_WEB_PORT),
            lambda s: ok_if(s.effective or (s.lan and not s.connected), "web"),
        ),
        probe(
            "lan_nodeport",
            "lanclient",
            "LAN client (on-link) -> NodePort; kube-proxy masquerades it (Cluster policy)",
            _tcp("lanclient", f.host_lan, NODEPORT),
            lambda s: ok_if(nd(s) and (s.effective or s.lan), "web", peer=f.cni_gw),
        ),
        probe(
            "lan_api",
            "lanclient",
            "LAN client -> API server port on the host",
            _tcp("lanclient", f.host_lan, API_PORT),
            lambda s: ok_if(nd(s) and (s.effective or s.lan), "host"),
        ),
        probe(
            "remote_nodeport",
            "lan",
            "off-link client -> NodePort; replies by the LAN; kube-proxy masquerades it",
            _tcp("lan", f.host_lan, NODEPORT, src=f.remote),
            lambda s: ok_if(s.effective, "web", path="lan", peer=f.cni_gw),
            watch="remote_nodeport",
        ),
        probe(
            "remote_api",
            "lan",
            "off-link client -> API server port; replies must leave by the LAN",
            _tcp("lan", f.host_lan, API_PORT, src=f.remote),
            lambda s: ok_if(s.effective, "host", path="lan"),
            watch="remote_api",
        ),
        probe(
            "remote_hostport",
            "lan",
            "off-link client -> a pod's hostPort (CNI portmap DNAT); replies by the LAN; "
            "the pod sees the client (portmap masquerades only hairpin and localhost)",
            _tcp("lan", f.host_lan, HOSTPORT, src=f.remote),
            lambda s: ok_if(s.effective, "hostport", path="lan", peer=seen(s, f.remote)),
            watch="remote_hostport",
        ),
        probe(
            "lan_hostport",
            "lanclient",
            "LAN client (on-link) -> a pod's hostPort; the pod sees the client",
            _tcp("lanclient", f.host_lan, HOSTPORT),
            lambda s: ok_if(
                nd(s) and (s.effective or s.lan), "hostport", peer=seen(s, f.lan_client)
            ),
        ),
        probe(
            "remote_lb",
            "lan",
            "off-link client -> a LoadBalancer IP not configured on the node; replies by the "
            "LAN; kube-proxy masquerades it (Cluster policy)",
            _tcp("lan", f.lb_ip, LB_PORT, src=f.remote),
            lambda s: ok_if(s.effective, "web", path="lan", peer=f.cni_gw),
            watch="remote_lb",
        ),
        probe(
            "lan_lb",
            "lanclient",
            "LAN client (on-link) -> a LoadBalancer IP routed to the node (Cluster policy)",
            _tcp("lanclient", f.lb_ip, LB_PORT),
            lambda s: ok_if(nd(s) and (s.effective or s.lan), "web", peer=f.cni_gw),
        ),
        # externalTrafficPolicy: Local, the same NodePort and LoadBalancer paths: kube-proxy
        # asks for no masquerade, so the pod sees the client, as without Mullvad.
        probe(
            "remote_nodeport_local",
            "lan",
            "off-link client -> NodePort of an externalTrafficPolicy Local Service; replies "
            "by the LAN; the pod sees the client",
            _tcp("lan", f.host_lan, LOCAL_NODEPORT, src=f.remote),
            lambda s: ok_if(s.effective, "web", path="lan", peer=seen(s, f.remote)),
            watch="remote_nodeport_local",
        ),
        probe(
            "lan_nodeport_local",
            "lanclient",
            "LAN client (on-link) -> NodePort of a Local Service; the pod sees the client",
            _tcp("lanclient", f.host_lan, LOCAL_NODEPORT),
            lambda s: ok_if(nd(s) and (s.effective or s.lan), "web", peer=seen(s, f.lan_client)),
        ),
        probe(
            "remote_lb_local",
            "lan",
            "off-link client -> LoadBalancer IP of a Local Service; the pod sees the client",
            _tcp("lan", f.lb_ip, LOCAL_SVC_PORT, src=f.remote),
            lambda s: ok_if(s.effective, "web", path="lan", peer=seen(s, f.remote)),
            watch="remote_lb_local",
        ),
        probe(
            "lan_lb_local",
            "lanclient",
            "LAN client (on-link) -> LoadBalancer IP of a Local Service; the pod sees the client",
            _tcp("lanclient", f.lb_ip, LOCAL_SVC_PORT),
            lambda s: ok_if(nd(s) and (s.effective or s.lan), "web", peer=seen(s, f.lan_client)),
        ),
        # A port Docker publishes to a node of a cluster in containers (kind's
        # extraPortMappings): exempted with NODE_NETWORKS, where the node sees the client.
        probe(
            "remote_published",
            "lan",
            "off-link client -> a port published to a kind-style node; replies by the LAN; "
            "the node sees the client",
            _tcp("lan", f.host_lan, PUBLISHED_PORT, src=f.remote),
            lambda s: ok_if(
                s.effective and bool(s.node_networks),
                "node",
                path="lan",
                peer=seen(s, f.remote, f.node_gw),
            ),
            watch="remote_published",
        ),
        probe(
            "lan_published",
            "lanclient",
            "LAN client (on-link) -> a port published to a kind-style node; it sees the client",
            _tcp("lanclient", f.host_lan, PUBLISHED_PORT),
            lambda s: ok_if(
                nd(s) and ((s.effective and bool(s.node_networks)) or s.lan),
                "node",
                # Without NODE_NETWORKS the table leaves it to Mullvad's LAN sharing.
                peer=seen(s, f.lan_client, f.node_gw) if s.node_networks else f.lan_client,
            ),
        ),
    ]
    # Host services outside the cluster, from off-link and from the LAN: as without the
    # table (only Mullvad's LAN sharing opens them, to the LAN).
    host_services = [
        p
        for name, port, what in (
            ("host_service", HOST_SERVICE_PORT, "a host service outside the cluster (sshd)"),
            ("ephemeral", HOST_EPHEMERAL_PORT, "a host server on an ephemeral port"),
        )
        for p in (
            probe(
                f"remote_{name}",
                "lan",
                f"off-link client -> {what}: as without the table",
                _tcp("lan", f.host_lan, port, src=f.remote),
                lambda s: Expect(False, path="nowhere"),
                watch=f"remote_{name}",
                leak=True,
            ),
            probe(
                f"lan_{name}",
                "lanclient",
                f"LAN client -> {what}: only Mullvad's LAN sharing opens it",
                _tcp("lanclient", f.host_lan, port),
                lambda s: ok_if(s.lan, "host"),
                leak=True,
            ),
        )
    ]

    # UDP from the LAN claiming a pod source no pod has: never to the ClusterIP, to a pod
    # or the host only where Mullvad's LAN sharing lets LAN traffic in.
    def lan_lets_in(s: Scenario) -> Expect:
        return spoofs_get_in(f, s)

    def never(s: Scenario) -> Expect:
        return Expect(False)

    targets: list[tuple[str, str, str, int, str, Callable[[Scenario], Expect]]] = [
        ("pod", "a pod", f.web_pod, SPOOF_PORT, "web", lan_lets_in),
        ("svc", "the cluster DNS ClusterIP", f.kube_dns, 53, "coredns", never),
        ("host", "the host", f.host_lan, SPOOF_PORT, "host", lan_lets_in),
    ]
    spoofs = [
        probe(
            f"spoof_{name}",
            "lan",
            f"UDP from the LAN claiming a pod source, to {what}",
            _spoof(f, dst, port, rx),
            expect,
            leak=True,
        )
        for name, what, dst, port, rx, expect in targets
    ]
    leaks = [
        *host_services,
        *spoofs,
        probe(
            "pod_lan",
            "client",
            "pod -> a LAN device: only allow LAN opens it, never the bypass",
            _tcp("client", f.lan_client, LAN_SERVICE_PORT),
            lambda s: ok_if(s.lan, "lanclient"),
            leak=True,
        ),
        probe(
            "host_lan",
            "host",
            "host -> a LAN device: only allow LAN opens it, never the bypass",
            _tcp("host", f.lan_client, LAN_SERVICE_PORT),
            lambda s: ok_if(s.lan, "lanclient"),
            leak=True,
        ),
        probe(
            "host_inet",
            "host",
            "host's own connection leaves only through the tunnel",
            _tcp("host", f.internet, INET_HOST),
            lambda s: ok_if(s.connected, "vpn", "tunnel", else_path="nowhere"),
            watch="host_inet",
            leak=True,
        ),
        probe(
            "host_inet_sport",
            "host",
            "host's own connection from a non-ephemeral source port still uses the tunnel",
            _tcp("host", f.internet, INET_HOST_SPORT, sport=CLIENT_FIXED_SPORT),
            lambda s: ok_if(s.connected, "vpn", "tunnel", else_path="nowhere"),
            watch="host_inet_sport",
            leak=True,
        ),
        probe(
            "pod_inet",
            "client",
            "pod -> internet leaves only through the tunnel",
            _tcp("client", f.internet, INET_POD),
            lambda s: ok_if(pod_nd(s) and s.connected, "vpn", "tunnel", else_path="nowhere"),
            watch="pod_inet",
            leak=True,
        ),
        probe(
            "pod_ext_svc",
            "client",
            "pod -> service whose endpoint is outside the cluster: still through the tunnel",
            _tcp("client", f.ext_svc, 80),
            lambda s: ok_if(pod_nd(s) and s.connected, "vpn", "tunnel", else_path="nowhere"),
            watch="pod_ext_svc",
            leak=True,
        ),
        probe(
            "host_ext_svc",
            "host",
            "host -> service whose endpoint is outside the cluster: still through the tunnel",
            _tcp("host", f.ext_svc, 81),
            lambda s: ok_if(s.connected, "vpn", "tunnel", else_path="nowhere"),
            watch="host_ext_svc",
            leak=True,
        ),
        probe(
            "pod_other_node",
            "client",
            "pod -> a pod range of another node (no route here): never onto the LAN",
            _tcp("client", f.other_node_pod, WEB_PORT),
            lambda s: Expect(False, path=not_lan(s)),
            watch="pod_other_node",
            leak=True,
        ),
        probe(
            "pod_unassigned_svc",
            "client",
            "pod -> a service address with nothing behind it: never onto the LAN",
            _tcp("client", f.unassigned_svc, SVC_WEB_PORT),
            lambda s: Expect(False, path=unassigned(s)),
            watch="pod_unassigned_svc",
            leak=True,
        ),
        probe(
            "host_unassigned_svc",
            "host",
            "host -> a service address with nothing behind it: never onto the LAN",
            _tcp("host", f.unassigned_svc, SVC_WEB_PORT + 1),
            lambda s: Expect(False, path=unassigned(s)),
            watch="host_unassigned_svc",
            leak=True,
        ),
        probe(
            "pod_tunnel_dns",
            "client",
            "the in-tunnel resolver keeps working for pods",
            _dns("client", f.tun_gw, "udp"),
            lambda s: ok_if(pod_nd(s) and s.connected, "tunnel"),
            leak=True,
        ),
        probe(
            "host_tunnel_dns",
            "host",
            "the in-tunnel resolver keeps working for the host",
            _dns("host", f.tun_gw, "udp"),
            lambda s: ok_if(s.connected, "tunnel"),
            leak=True,
        ),
        probe(
            "lan_tunnel_ip",
            "lanclient",
            "LAN attacker -> the tunnel's own address (CVE-2019-14899) is never exempted",
            _tcp("lanclient", f.tun_host, API_PORT),
            lambda s: Expect(False),
            leak=True,
            tunnel_address=True,
        ),
        probe(
            "pod_tunnel_ip",
            "client",
            "pod -> the tunnel's own address is never exempted",
            _tcp("client", f.tun_host, API_PORT),
            lambda s: Expect(False),
            leak=True,
            tunnel_address=True,
        ),
    ]

    # --- issue 22, forward/output side: what is on the machine but not the cluster's ---
    # (topology.NON_CLUSTER_BRIDGES). Containers on bridges named like the cluster's are
    # reached as Mullvad alone decides (its LAN sharing, for their private IPv4; never
    # their IPv6, outside fc00::/7), whether straight or through a ClusterIP.
    def as_lan(s: Scenario) -> bool:
        return f.v == 4 and nd(s) and s.lan

    def excluded(s: Scenario) -> Expect:
        """A process Mullvad's split tunnel excludes leaves by the LAN, also in the
        Blocked state (the split-tunnel rules stay); without split tunnelling it is a
        plain process of the machine: through the tunnel, or nowhere."""
        if s.mullvad.split:
            return Expect(True, "lan", "lan")
        return ok_if(s.connected, "vpn", "tunnel", else_path="nowhere")

    non_cluster = [
        probe(
            "pod_svc_docker",
            "client",
            "pod -> a ClusterIP whose endpoint is a container on docker0 (not the "
            "cluster's): as Mullvad alone decides, the exemption ends after DNAT",
            _tcp("client", DOCKER_SVC[f.v], SVC_WEB_PORT),
            lambda s: ok_if(as_lan(s), DOCKER0.role),
            leak=True,
        ),
        probe(
            "pod_br_ctr",
            "client",
            "pod -> a container on a br-* bridge (not the cluster's): as Mullvad alone "
            "decides, a pod is exempted only to the cluster",
            _tcp("client", BR_NET.ctr[f.v], WEB_PORT),
            lambda s: ok_if(as_lan(s), BR_NET.role),
            leak=True,
        ),
        probe(
            "host_svc_off_node",
            "host",
            "host -> a ClusterIP whose endpoint is a pod-range address on no node here: "
            "never onto the LAN (the route after DNAT is the default route)",
            _tcp("host", OFF_NODE_SVC[f.v], SVC_WEB_PORT),
            lambda s: Expect(False, path=not_lan(s)),
            watch="host_svc_off_node",
            leak=True,
        ),
        probe(
            "host_tunnel_nodeport",
            "host",
            "host -> a NodePort on the tunnel's own address (kube-proxy opens NodePorts on "
            "every local address): never exempted, its replies from the pod stay dropped",
            _tcp("host", f.tun_host, NODEPORT),
            lambda s: Expect(False),
            leak=True,
            tunnel_address=True,
        ),
        probe(
            "excluded_ext_svc",
            "host",
            "a split-tunnel excluded process -> a Service with an external endpoint: "
            "exactly as Mullvad alone handles it",
            lambda lab: excluded_tcp(lab, f.ext_svc, EXT_EXCLUDED_PORT),
            excluded,
            watch="excluded_ext_svc",
        ),
    ]
    return dns_probes + works + leaks + non_cluster + inbound_probes(f)


# --- issue 22, prerouting side: the probes of `prerouting_new_*`, `confirm` and `nat_park`
# Kept in one block (the lab's side: topology.build_inbound). Each probe is here because
# a rule of ours is the only thing that decides it (see its `why`).


def spoofs_get_in(f: Fam, s: Scenario) -> Expect:
    """Where UDP from the LAN with a pod source reaches a pod or the host: only where
    Mullvad's LAN sharing lets LAN traffic in (and strict rp_filter does not drop it:
    the pod range is routed by cni0, IPv4 only)."""
    return Expect(s.lan and (f.v == 6 or s.rp_filter != 1))


def inbound_taken(lab: Lab, role: str, counter: str) -> int:
    """The datagrams counted since the last reading: each reading resets the counter (one
    command, and the mutation sweep's next run starts from zero)."""
    out = lab[role].exec("nft", "-j", "reset", "counter", "inet", INBOUND_RX, counter).stdout
    return int(json.loads(out)["nftables"][1]["counter"]["packets"])


def _spoof_via(f: Fam, name: str, dst: str, port: int) -> Callable[[Lab], Outcome]:
    """INBOUND_RECEIVERS[name]'s datagrams, from a pod source no pod has, sent from the
    LAN to dst:port; counted where they are DNAT-ed to."""
    role, _, payload = INBOUND_RECEIVERS[name]

    def run(lab: Lab) -> Outcome:
        lab["lan"].call(lambda: send_spoofed(f, dst, port, payload))
        lab.barrier()  # LAN router -> machine -> pod
        got = inbound_taken(lab, role, watch_name(name, f))
        return Outcome(got > 0, f"{got} of 3 spoofed packets delivered to {role}")

    return run


def _burst(f: Fam, count: int = 3) -> Callable[[Lab], Outcome]:
    """The host sends `count` datagrams of one UDP flow to the web pod, no reply between
    them; ok if all arrive."""
    role, port, payload = INBOUND_RECEIVERS["burst"]

    def run(lab: Lab) -> Outcome:
        errors: list[str] = []

        def send() -> None:
            family = socket.AF_INET6 if f.v == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                for _ in range(count):
                    try:
                        sock.sendto(payload, (f.web_pod, port))
                    except OSError as exc:
                        errors.append(exc.strerror or repr(exc))

        lab["host"].call(send)
        lab.barrier()  # machine -> pod
        got = inbound_taken(lab, role, watch_name("burst", f))
        detail = f"{got} of {count} datagrams of one flow delivered to {role}"
        if errors:
            detail += f" (sender: {', '.join(errors)})"
        return Outcome(got == count, detail, role if got == count else None)

    return run


def inbound_probes(f: Fam) -> list[Probe]:
    """The probes of one family. The LAN router (192.168.1.1, on-link) is the LAN host
    here: it has the machine's link-layer address pinned, so its IPv6 probes do not
    depend on neighbour discovery, which Mullvad's input chain breaks for the LAN
    client's ULA source with LAN sharing off (see probes_for's nd)."""
    i = INBOUND[f.v]
    out = [
        Probe(
            "remote_public_api",
            f,
            "lan",
            "off-link client -> API server port on a PUBLIC_ADDRESSES address (on lo, not "
            "on the interface it arrives on); replies must leave by the LAN",
            _tcp("lan", i.public, API_PORT, src=f.remote),
            lambda s: ok_if(s.effective, "host", path="lan"),
            watch="remote_public_api",
        ),
        Probe(
            "lan_svc",
            f,
            "lan",
            "LAN host -> a ClusterIP routed to the node: a ClusterIP is the cluster's own, "
            "never served to the outside (only Mullvad's LAN sharing lets it through); "
            "kube-proxy masquerades a ClusterIP's clients from outside the pod range, and "
            "our table must leave the mark it asks that with",
            _tcp("lan", f.web_svc, SVC_WEB_PORT, src=f.router),
            lambda s: ok_if(s.lan, "web", peer=f.cni_gw),
        ),
        Probe(
            "lan_nodeport_other_if",
            f,
            "lan",
            "LAN host -> a NodePort on the address of another interface of the machine "
            "(kube-proxy opens NodePorts on every local address): only Mullvad's LAN "
            "sharing lets it through",
            _tcp("lan", i.other_if, NODEPORT, src=f.router),
            lambda s: ok_if(s.lan, "web"),
        ),
        Probe(
            "lan_api_other_if",
            f,
            "lan",
            "LAN host -> API server port on the address of another interface of the "
            "machine: only Mullvad's LAN sharing lets it through",
            _tcp("lan", i.other_if, API_PORT, src=f.router),
            lambda s: ok_if(s.lan, "host"),
        ),
        Probe(
            "lan_api_other_svc",
            f,
            "lan",
            "LAN host -> a ClusterIP DNAT-ed to the API server port on another interface's "
            "address (HOST_PORTS count on the interface a connection arrives on only)",
            _tcp("lan", i.api_other_svc, SVC_API_PORT, src=f.router),
            lambda s: ok_if(s.lan, "host"),
        ),
        Probe(
            "lan_extip_tunnel_gw",
            f,
            "lan",
            "LAN host -> a Service's external IP that is Mullvad's in-tunnel gateway (a "
            "Service may name any externalIPs): Mullvad's addresses are never exempted",
            _tcp("lan", f.tun_gw, SVC_WEB_PORT, src=f.router),
            lambda s: ok_if(s.lan, "web"),
        ),
        Probe(
            "host_pod_burst",
            f,
            "host",
            "the machine sends several datagrams to a pod before any reply (one flow): "
            "all arrive (a flow of this machine's is not parked: its next packets pass no "
            "prerouting, where the parked mark is given back)",
            _burst(f),
            lambda s: ok_if(s.effective or s.lan, "web"),
        ),
    ]
    spoofs = [
        ("nodeport", "a served UDP NodePort", "via_nodeport", f.host_lan, UDP_NODEPORT),
        ("lb", "a served UDP port on the LoadBalancer IP", "via_lb", f.lb_ip, SPOOF_PORT),
        ("hostport", "a pod's UDP hostPort", "via_hostport", f.host_lan, HOSTPORT_UDP),
    ]
    out += [
        Probe(
            f"spoof_{name}",
            f,
            "lan",
            f"UDP from the LAN claiming a pod source, to {what} (DNAT-ed into a pod): "
            "never exempted",
            _spoof_via(f, counter, dst, port),
            lambda s: spoofs_get_in(f, s),
            tags=frozenset({"leak"}),
        )
        for name, what, counter, dst, port in spoofs
    ]
    if f.v == 6:  # IPv4: pod_node_ip
        out.append(
            Probe(
                "hostport_pod_node_ip",
                f,
                "hostport",
                "a pod (the hostport pod, whose gateway's link-layer address is known) -> the "
                "node's LAN address",
                _tcp("hostport", f.host_lan, API_PORT),
                lambda s: ok_if(s.effective or s.lan, "host"),
            )
        )
    return out


# --- end of issue 22, prerouting side -----------------------------------------------------


PROBES: list[Probe] = [p for f in FAMILIES for p in probes_for(f)]
PROBE_BY_ID = {p.id: p for p in PROBES}


def applies(probe: Probe, scenario: Scenario) -> bool:
    """Whether the probe says anything in the scenario. Probes of the tunnel's own
    address in the blocked state could only pass: the tunnel and its address are gone."""
    return not ("tunnel_address" in probe.tags and not scenario.connected)


def check(
    probe: Probe, got: Outcome, counters: dict[str, tuple[int, int]], want: Expect
) -> list[str]:
    """Differences between what a probe showed and what the scenario expects."""
    problems = []
    if got.ok != want.ok:
        problems.append(f"expected {want}, got {'ok' if got.ok else 'blocked'}: {got.detail}")
    elif want.ok and want.ident and got.ident != want.ident:
        problems.append(f"expected an answer from {want.ident}, got {got.detail}")
    elif want.ok and want.peer and (got.peer or "").removeprefix("::ffff:") != want.peer:
        problems.append(f"the server should see {want.peer} as the client, got {got.detail}")
    if probe.watch and want.path:
        tun, lan = counters[watch_name(probe.watch, probe.fam)]
        bad = {
            "lan": tun != 0 or lan == 0,
            "tunnel": lan != 0 or tun == 0,
            "nowhere": lan != 0 or tun != 0,
            "not_lan": lan != 0,
        }[want.path]
        if bad:
            problems.append(
                f"expected path {want.path}: {tun} packet(s) into the tunnel, {lan} onto the LAN"
            )
    return problems
