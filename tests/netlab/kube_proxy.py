"""kube-proxy's own rules, in both of its modes, for the lab's one-node cluster.

The rule shapes, chain names, hashes, priorities and rule order are written after
kube-proxy's source, kubernetes/kubernetes at commit b0f823e6ccd8 (`UPSTREAM`), files

* pkg/proxy/iptables/proxier.go  (`syncProxyRules`, `iptablesJumpChains`,
  `writeServiceToEndpointRules`, `portProtoHash`, `servicePortEndpointChainName`)
* pkg/proxy/nftables/proxier.go  (`nftablesBaseChains`, `nftablesJumpChains`,
  `setupNFTables`, `syncProxyRules`, `writeServiceToEndpointRules`, `hashAndTruncate`)
* pkg/proxy/topology.go          (`CategorizeEndpoints`, as far as one node needs it)

That commit is the newest version of both proxier files that could be read here (the
repository itself was too large to fetch, so no release tag could be checked out). It
has the nftables partial-sync element storage (PR #126013, mid-2024) and not yet PR
#132456 (mid-2025, v1.34: filter chains renamed `*-pre-dnat`, filter-input/forward/
output moved to priority 0), i.e. it is the v1.31-v1.33 line. Only the rendering of
the nft text (numeric priorities, `add element ... comment`) is taken from the expected
dumps of a later pkg/proxy/nftables/proxier_test.go (commit 81810de635aa). No upstream
code is copied; this module re-states the shapes for the lab.

Defaults are kube-proxy's defaults: `--masquerade-bit=14` (mark 0x4000, printed by the
proxier as `0x00004000`), `--nodeport-addresses` unset (NodePorts on every local
address), `--detect-local-mode=ClusterCIDR` with `--cluster-cidr` (`cluster_cidr(s)`;
empty means no local-traffic detector), `--masquerade-all=false`, nf_conntrack_tcp_be_liberal
off (so the iptables INVALID drop is there), `iptables --random-fully` available.

Simplified, on purpose (the Service dataclass has no field for them):

* No session affinity, loadBalancerSourceRanges (the firewall chains and maps exist,
  empty, as upstream makes them), internalTrafficPolicy=Local, topology hints,
  terminating endpoints, SCTP, healthCheckNodePort (no health-check server runs).
* One node: an endpoint counts as local (on this node) when its IP is inside the
  cluster CIDR of its family, i.e. every pod runs here; endpoints outside it (the node
  IP behind "kubernetes", an internet IP behind a selector-less Service) are not
  local, as their EndpointSlices carry no nodeName.
* Services and endpoints are taken in the order given (upstream walks Go maps).
* iptables: kube-proxy writes its chains with `iptables-restore --noflush` and adds the
  jumps from the built-in chains with `iptables -C`/`-I` (EnsureRule, Prepend). By
  default the text here is the resulting end state of both in one file, for a plain
  `iptables-restore`, which replaces the mangle, nat and filter tables (idempotent).
  `noflush=True` plus `ensure_iptables_jumps` does it kube-proxy's way and leaves other
  users' chains alone. The nfacct matches are left out (upstream leaves them out when
  the nfacct counters cannot be created).
* `localhost_nodeports` (kube-proxy's --iptables-localhost-nodeports) defaults to
  False here while kube-proxy defaults it to True for IPv4: True also needs
  route_localnet=1, which kube-proxy sets and the lab does not. With False the
  NodePort jump excludes 127.0.0.0/8, as in IPv6 and in nftables mode.
* nftables: kube-proxy drops traffic to unallocated ClusterIPs only when it knows the
  ServiceCIDRs (from ServiceCIDR objects); pass `service_cidrs` for that rule.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

UPSTREAM = "kubernetes/kubernetes@b0f823e6ccd8 (v1.31-v1.33 line)"

MASQ_BIT = 14  # kube-proxy --masquerade-bit default
MASQ_MARK = f"{1 << MASQ_BIT:#010x}"  # Go's fmt.Sprintf("%#08x", 1<<14) == "0x00004000"

# nftables base chain priorities (knftables DNATPriority = dstnat = -100,
# SNATPriority = srcnat = 100), written as numbers like the upstream test dumps;
# nft 1.0.6 does not accept the name `dstnat` on an output hook.
NFT_DSTNAT = -100
NFT_SRCNAT = 100


@dataclass(frozen=True)
class Service:
    """One port of one Service, with its ready endpoints (one IP family)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # "tcp" | "udp"
    cluster_ip: str  # v4 or v6 (one family per Service, like single-stack Services)
    port: int
    endpoints: tuple[tuple[str, int], ...]  # (ip, port); may be outside the pod CIDR
    node_port: int | None = None
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress IPs
    external_ips: tuple[str, ...] = ()
    local_traffic: bool = False  # externalTrafficPolicy: Local

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.cluster_ip).version

    @property
    def port_name_string(self) -> str:
        """proxy.ServicePortName.String(): `ns/name:port` (`ns/name` if unnamed)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


def _version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def _hostport(ip: str, port: int) -> str:
    """net.JoinHostPort, as BaseEndpointInfo.String() writes an endpoint."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _b32_sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


@dataclass(frozen=True)
class _Plan:
    """What the proxier decides for one service port (proxy.CategorizeEndpoints)."""

    svc: Service
    cluster_eps: tuple[tuple[str, int], ...]
    local_eps: tuple[tuple[str, int], ...]
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]

    @property
    def externally_accessible(self) -> bool:
        return bool(self.svc.node_port) or bool(self.lb_ips) or bool(self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.svc.local_traffic and self.externally_accessible

    @property
    def has_endpoints(self) -> bool:
        return bool(self.cluster_eps)

    @property
    def uses_cluster_chain(self) -> bool:
        # UsesClusterEndpoints() is always true: internalTrafficPolicy is Cluster.
        return bool(self.cluster_eps)

    @property
    def uses_local_chain(self) -> bool:
        return self.external_policy_local and bool(self.local_eps)

    @property
    def has_external_endpoints(self) -> bool:
        if self.external_policy_local:
            return bool(self.local_eps)
        return self.has_endpoints

    @property
    def uses_external_chain(self) -> bool:
        return self.has_endpoints and self.externally_accessible

    @property
    def reachable_eps(self) -> tuple[tuple[str, int], ...]:
        """allLocallyReachableEndpoints: the cluster endpoints, then local extras."""
        extra = tuple(ep for ep in self.local_eps if ep not in self.cluster_eps)
        return self.cluster_eps + extra if self.external_policy_local else self.cluster_eps


def _plans(services: Sequence[Service], family: int, cluster_cidr: str) -> list[_Plan]:
    net = ipaddress.ip_network(cluster_cidr) if cluster_cidr else None
    plans = []
    for svc in services:
        if svc.family != family:
            continue
        eps = tuple(ep for ep in svc.endpoints if _version(ep[0]) == family)
        local = tuple(ep for ep in eps if net is not None and ipaddress.ip_address(ep[0]) in net)
        plans.append(
            _Plan(
                svc=svc,
                cluster_eps=eps,
                local_eps=local,
                external_ips=tuple(a for a in svc.external_ips if _version(a) == family),
                lb_ips=tuple(a for a in svc.load_balancer_ips if _version(a) == family),
            )
        )
    return plans


def _cidr_for(cluster_cidrs: Sequence[str], family: int) -> str:
    for cidr in cluster_cidrs:
        if ipaddress.ip_network(cidr).version == family:
            return cidr
    return ""


# ======================================================================================
# iptables mode (pkg/proxy/iptables/proxier.go)
# ======================================================================================

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy ensures it and its jumps

_NEW = "-m conntrack --ctstate NEW"
# iptablesJumpChains, in upstream order: (table, target, from, comment, extra match).
_IPT_JUMPS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "filter",
        KUBE_EXTERNAL_SERVICES,
        "INPUT",
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    (
        "filter",
        KUBE_EXTERNAL_SERVICES,
        "FORWARD",
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ""),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", _NEW),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", _NEW),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", _NEW),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", _NEW),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", _NEW),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
    # iptablesKubeletJumpChains (no comment)
    ("filter", KUBE_FIREWALL, "INPUT", "", ""),
    ("filter", KUBE_FIREWALL, "OUTPUT", "", ""),
)
_BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


def port_proto_hash(port_name_string: str, protocol: str) -> str:
    """portProtoHash: base32(sha256(name + protocol))[:16]."""
    return _b32_sha256(port_name_string + protocol)[:16]


def ipt_service_chains(svc: Service) -> dict[str, str]:
    """KUBE-SVC-/SVL-/EXT-/FW- chain names of a service port."""
    h = port_proto_hash(svc.port_name_string, svc.protocol)
    return {p: f"KUBE-{p}-{h}" for p in ("SVC", "SVL", "EXT", "FW")}


def ipt_endpoint_chain(svc: Service, ep: tuple[str, int]) -> str:
    """servicePortEndpointChainName: KUBE-SEP- + base32(sha256(name+proto+ip:port))[:16]."""
    return "KUBE-SEP-" + _b32_sha256(svc.port_name_string + svc.protocol + _hostport(*ep))[:16]


def _q(text: str) -> str:
    return f'"{text}"'


def _ipt_jump_args(comment: str, extra: str, target: str) -> list[str]:
    """The rule arguments of one jump (extra match, comment, -j), as EnsureRule gets them."""
    args = extra.split() if extra else []
    if comment:
        args += ["-m", "comment", "--comment", comment]
    return [*args, "-j", target]


def _ipt_jump_rules() -> dict[tuple[str, str], list[str]]:
    """Built-in chain -> rules, as EnsureRule(Prepend) leaves them: the list reversed."""
    out: dict[tuple[str, str], list[str]] = {}
    for table, target, src, comment, extra in _IPT_JUMPS:
        args = [_q(a) if " " in a else a for a in _ipt_jump_args(comment, extra, target)]
        out.setdefault((table, src), []).insert(0, " ".join([f"-A {src}", *args]))
    return out


def ensure_iptables_jumps(family: int, run: Callable[[list[str]], int]) -> None:
    """What kube-proxy does before each full sync: EnsureChain and EnsureRule(Prepend)
    for every jump from a built-in chain (`iptables -N`, then `-C`, and `-I` if absent).

    For use with `iptables_restore(..., noflush=True)`, which like kube-proxy's own
    restore leaves the built-in chains alone. `run` executes one argv and returns its
    exit status (e.g. inside a namespace).
    """
    binary = "iptables" if family == 4 else "ip6tables"
    for table in ("mangle", "nat", "filter"):  # the iptables monitor's canaries
        run([binary, "-w", "-t", table, "-N", KUBE_PROXY_CANARY])
    for table, target, src, comment, extra in _IPT_JUMPS:
        base = [binary, "-w", "-t", table]
        run([*base, "-N", target])  # fails harmlessly if the chain exists
        args = _ipt_jump_args(comment, extra, target)
        if run([*base, "-C", src, *args]) != 0:
            run([*base, "-I", src, *args])


def _ipt_endpoint_rules(
    plan: _Plan, chain: str, eps: tuple[tuple[str, int], ...], rules: list[str]
) -> None:
    """writeServiceToEndpointRules: statistic for all but the last endpoint."""
    svc = plan.svc
    name = svc.port_name_string
    for i, ep in enumerate(eps):
        comment = _q(f"{name} -> {_hostport(*ep)}")
        stat = ""
        if i < len(eps) - 1:
            stat = f" -m statistic --mode random --probability {1.0 / (len(eps) - i):.10f}"
        rules.append(
            f"-A {chain} -m comment --comment {comment}{stat} -j {ipt_endpoint_chain(svc, ep)}"
        )


@dataclass
class _IptTables:
    """The rule lines of one restore, collected in upstream's buffers."""

    filter_chains: list[str]
    filter_rules: list[str]
    nat_chains: list[str]
    nat_rules: list[str]


def _ipt_service(plan: _Plan, out: _IptTables, cluster_cidr: str) -> None:
    """The per-service-port part of syncProxyRules (iptables): captures, then chains."""
    filter_rules, nat_rules = out.filter_rules, out.nat_rules
    svc = plan.svc
    name = svc.port_name_string
    chains = ipt_service_chains(svc)
    svc_chain, ext_chain = chains["SVC"], chains["EXT"]
    match = f"-m {svc.protocol} -p {svc.protocol}"

    if not plan.has_endpoints:
        int_target, int_comment = "REJECT", _q(f"{name} has no endpoints")
        ext_target, ext_comment = int_target, int_comment
    else:
        int_target = int_comment = ""
        ext_target, ext_comment = "DROP", _q(f"{name} has no local endpoints")

    # Capture the clusterIP.
    if plan.has_endpoints:
        nat_rules.append(
            f"-A {KUBE_SERVICES} -m comment --comment {_q(name + ' cluster IP')} "
            f"{match} -d {svc.cluster_ip} --dport {svc.port} -j {svc_chain}"
        )
    else:
        filter_rules.append(
            f"-A {KUBE_SERVICES} -m comment --comment {int_comment} "
            f"{match} -d {svc.cluster_ip} --dport {svc.port} -j {int_target}"
        )
    # Capture externalIPs.
    for ip in plan.external_ips:
        if plan.has_endpoints:
            nat_rules.append(
                f"-A {KUBE_SERVICES} -m comment --comment {_q(name + ' external IP')} "
                f"{match} -d {ip} --dport {svc.port} -j {ext_chain}"
            )
        if not plan.has_external_endpoints:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} "
                f"{match} -d {ip} --dport {svc.port} -j {ext_target}"
            )
    # Capture load-balancer ingress (no source ranges: straight to the EXT chain).
    for ip in plan.lb_ips:
        if plan.has_endpoints:
            nat_rules.append(
                f"-A {KUBE_SERVICES} -m comment --comment {_q(name + ' loadbalancer IP')} "
                f"{match} -d {ip} --dport {svc.port} -j {ext_chain}"
            )
    if not plan.has_external_endpoints:
        for ip in plan.lb_ips:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} "
                f"{match} -d {ip} --dport {svc.port} -j {ext_target}"
            )
    # Capture nodeports.
    if svc.node_port:
        if plan.has_endpoints:
            nat_rules.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {name} "
                f"{match} --dport {svc.node_port} -j {ext_chain}"
            )
        if not plan.has_external_endpoints:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} "
                f"-m addrtype --dst-type LOCAL {match} --dport {svc.node_port} "
                f"-j {ext_target}"
            )

    _ipt_service_chains(plan, out, cluster_cidr)


def _ipt_service_chains(plan: _Plan, out: _IptTables, cluster_cidr: str) -> None:
    """The SVC/SVL/EXT/SEP chains of one service port."""
    if_local = f"-s {cluster_cidr}" if cluster_cidr else ""
    if_not_local = f"! -s {cluster_cidr}" if cluster_cidr else ""
    nat_chains, nat_rules = out.nat_chains, out.nat_rules
    svc = plan.svc
    name = svc.port_name_string
    chains = ipt_service_chains(svc)
    svc_chain, svl_chain, ext_chain = chains["SVC"], chains["SVL"], chains["EXT"]
    match = f"-m {svc.protocol} -p {svc.protocol}"
    ext_policy_chain = svl_chain if plan.external_policy_local else svc_chain

    # Internal traffic: masquerade off-cluster sources (--cluster-cidr).
    if plan.has_endpoints and if_not_local:
        nat_rules.append(
            f"-A {svc_chain} -m comment --comment {_q(name + ' cluster IP')} "
            f"{match} -d {svc.cluster_ip} --dport {svc.port} {if_not_local} "
            f"-j {KUBE_MARK_MASQ}"
        )
    # External traffic.
    if plan.uses_external_chain:
        nat_chains.append(ext_chain)
        if not plan.external_policy_local:
            comment = _q(f"masquerade traffic for {name} external destinations")
            nat_rules.append(f"-A {ext_chain} -m comment --comment {comment} -j {KUBE_MARK_MASQ}")
        else:
            if if_local:
                comment = _q(f"pod traffic for {name} external destinations")
                nat_rules.append(
                    f"-A {ext_chain} -m comment --comment {comment} {if_local} -j {svc_chain}"
                )
            comment = _q(f"masquerade LOCAL traffic for {name} external destinations")
            nat_rules.append(
                f"-A {ext_chain} -m comment --comment {comment} "
                f"-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            comment = _q(f"route LOCAL traffic for {name} external destinations")
            nat_rules.append(
                f"-A {ext_chain} -m comment --comment {comment} "
                f"-m addrtype --src-type LOCAL -j {svc_chain}"
            )
        if plan.has_external_endpoints:
            nat_rules.append(f"-A {ext_chain} -j {ext_policy_chain}")
    if plan.uses_cluster_chain:
        nat_chains.append(svc_chain)
        _ipt_endpoint_rules(plan, svc_chain, plan.cluster_eps, nat_rules)
    if plan.uses_local_chain:
        nat_chains.append(svl_chain)
        _ipt_endpoint_rules(plan, svl_chain, plan.local_eps, nat_rules)
    for ep in plan.reachable_eps:
        sep = ipt_endpoint_chain(svc, ep)
        nat_chains.append(sep)
        nat_rules.append(f"-A {sep} -m comment --comment {name} -s {ep[0]} -j {KUBE_MARK_MASQ}")
        nat_rules.append(
            f"-A {sep} -m comment --comment {name} {match} "
            f"-j DNAT --to-destination {_hostport(*ep)}"
        )


def iptables_restore(
    services: Sequence[Service],
    family: int,
    cluster_cidr: str,
    *,
    localhost_nodeports: bool = False,
    noflush: bool = False,
) -> str:
    """iptables-restore (family 4) or ip6tables-restore (6) input: kube-proxy's rules.

    mangle (the canary chain kube-proxy's iptables monitor creates), filter and nat.
    By default with the jumps from PREROUTING/INPUT/FORWARD/OUTPUT/POSTROUTING, for a
    plain `iptables-restore`, which replaces those three tables (idempotent, but it
    also removes other users' chains there, e.g. the CNI portmap plugin's). With
    `noflush`, exactly what kube-proxy itself restores: only its own chains, for
    `iptables-restore --noflush`, the jumps left to `ensure_iptables_jumps`.
    `cluster_cidr` is --cluster-cidr for this family ("" = no local-traffic detector).
    """
    if family not in (4, 6):
        raise ValueError("family must be 4 or 6")
    is_v6 = family == 6
    localhost_nodeports = localhost_nodeports and not is_v6
    masq = MASQ_MARK
    plans = _plans(services, family, cluster_cidr)
    filter_chains = [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS]
    filter_chains += [KUBE_PROXY_FIREWALL]
    nat_chains = [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ]
    filter_rules: list[str] = []
    nat_rules = [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {masq}/{masq} -j RETURN",
        # "Clear the mark to avoid re-masquerading if the packet re-traverses the stack"
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {masq}",
        f"-A {KUBE_POSTROUTING} -m comment --comment "
        f"{_q('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {masq}",
    ]
    if localhost_nodeports:
        filter_chains.append(KUBE_FIREWALL)
        filter_rules.append(
            f"-A {KUBE_FIREWALL} -m comment --comment "
            f"{_q('block incoming localnet connections')} -d 127.0.0.0/8 ! -s 127.0.0.0/8 "
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        )

    tables = _IptTables(filter_chains, filter_rules, nat_chains, nat_rules)
    for plan in plans:
        _ipt_service(plan, tables, cluster_cidr)

    # Tail-call to the nodePorts chain (nodePortAddresses unset: MatchAll).
    dests = "-m addrtype --dst-type LOCAL"
    if is_v6:
        dests += " ! -d ::1/128"
    elif not localhost_nodeports:
        dests += " ! -d 127.0.0.0/8"
    comment = _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    nat_rules.append(
        f"-A {KUBE_SERVICES} -m comment --comment {comment} {dests} -j {KUBE_NODEPORTS}"
    )
    filter_rules += [
        f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f"-A {KUBE_FORWARD} -m comment --comment {_q('kubernetes forwarding rules')} "
        f"-m mark --mark {masq}/{masq} -j ACCEPT",
        f"-A {KUBE_FORWARD} -m comment --comment {_q('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]

    jumps = _ipt_jump_rules()

    def table(name: str, chains: list[str], rules: list[str]) -> list[str]:
        lines = [f"*{name}"]
        if noflush:  # kube-proxy's restore: its chain lines (each one flushes it), rules
            return [*lines, *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]
        lines += [f":{c} ACCEPT [0:0]" for c in _BUILTIN[name]]
        ensured = [j[1] for j in _IPT_JUMPS if j[0] == name]
        for chain in [*dict.fromkeys(chains + ensured), KUBE_PROXY_CANARY]:
            lines.append(f":{chain} - [0:0]")
        for src in _BUILTIN[name]:
            lines += jumps.get((name, src), [])
        return [*lines, *rules, "COMMIT"]

    out = [
        f"# kube-proxy iptables mode, IPv{family}, after {UPSTREAM}",
        "*mangle",
        f":{KUBE_PROXY_CANARY} - [0:0]",
        "COMMIT",
        *table("filter", filter_chains, filter_rules),
        *table("nat", nat_chains, nat_rules),
    ]
    return "\n".join(out) + "\n"


# ======================================================================================
# nftables mode (pkg/proxy/nftables/proxier.go)
# ======================================================================================

NFT_TABLE = "kube-proxy"

# nftablesBaseChains: (name, type, hook, priority).
_NFT_BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    ("filter-prerouting", "filter", "prerouting", NFT_DSTNAT - 10),
    ("filter-input", "filter", "input", NFT_DSTNAT - 10),
    ("filter-forward", "filter", "forward", NFT_DSTNAT - 10),
    ("filter-output", "filter", "output", NFT_DSTNAT - 10),
    ("filter-output-post-dnat", "filter", "output", NFT_DSTNAT + 10),
    ("nat-prerouting", "nat", "prerouting", NFT_DSTNAT),
    ("nat-output", "nat", "output", NFT_DSTNAT),
    ("nat-postrouting", "nat", "postrouting", NFT_SRCNAT),
)
# nftablesJumpChains: (target, from, extra match).
_NFT_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)


def hash_and_truncate(name: str) -> str:
    """hashAndTruncate: base32(sha256(name))[:8] + "-" + name, cut to 240 characters."""
    out = _b32_sha256(name)[:8] + "-" + name
    limit = 256 - 16  # knftables.NameLengthMax - chainNamePrefixLengthMax
    return out if len(out) <= limit else out[: limit - 3] + "..."


def nft_service_chains(svc: Service) -> dict[str, str]:
    """service-/local-/external-/firewall- chain names of a service port."""
    base = hash_and_truncate(f"{svc.namespace}/{svc.name}/{svc.protocol}/{svc.port_name}")
    return {p: f"{p}-{base}" for p in ("service", "local", "external", "firewall")}


def nft_endpoint_chain(svc: Service, ep: tuple[str, int]) -> str:
    """endpoint- chain of one endpoint (colons of an IPv6 address become dots)."""
    ip = ep[0].replace(":", ".")
    base = f"{svc.namespace}/{svc.name}/{svc.protocol}/{svc.port_name}__{ip}/{ep[1]}"
    return "endpoint-" + hash_and_truncate(base)


class _Nft:
    """Collects the lines of one table's `nft -f` text, as knftables would write them."""

    def __init__(self, family: int) -> None:
        self.ipx = "ip" if family == 4 else "ip6"
        self.addr_type = "ipv4_addr" if family == 4 else "ipv6_addr"
        self.t = f"{self.ipx} {NFT_TABLE}"
        self.chains: set[str] = set()
        self.out = [
            f"# kube-proxy nftables mode, IPv{family}, after {UPSTREAM}",
            f"add table {self.t}",
            f"delete table {self.t}",
            f'add table {self.t} {{ comment "rules for kube-proxy" ; }}',
        ]

    def chain(self, name: str, comment: str = "") -> None:
        """ensureChain: add a regular chain once."""
        if name not in self.chains:
            self.chains.add(name)
            extra = f' {{ comment "{comment}" ; }}' if comment else ""
            self.out.append(f"add chain {self.t} {name}{extra}")

    def rule(self, chain_name: str, text: str, comment: str = "") -> None:
        c = f' comment "{comment}"' if comment else ""
        self.out.append(f"add rule {self.t} {chain_name} {text}{c}")

    def element(self, container: str, key: str, value: str = "", comment: str = "") -> None:
        c = f' comment "{comment}"' if comment else ""
        v = f" : {value}" if value else ""
        self.out.append(f"add element {self.t} {container} {{ {key}{c}{v} }}")


def _nft_setup(w: _Nft, family: int, svc_cidrs: list[str]) -> None:
    """setupNFTables: base chains, jumps, masquerading, sets and maps."""
    ipx, addr_type, t = w.ipx, w.addr_type, w.t
    no_localhost = "ip daddr != 127.0.0.0/8" if family == 4 else "ip6 daddr != ::1"
    masq = MASQ_MARK
    for name, ctype, hook, prio in _NFT_BASE_CHAINS:
        w.chains.add(name)
        w.out.append(f"add chain {t} {name} {{ type {ctype} hook {hook} priority {prio} ; }}")
    for target, src, extra in _NFT_JUMPS:
        w.chain(target)
        w.rule(src, f"{extra} jump {target}".strip())
    for name in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        w.chain(name)
    w.rule("mark-for-masquerade", f"mark set mark or {masq}")
    w.rule("masquerading", f"mark and {masq} == 0 return")
    w.rule("masquerading", f"mark set mark xor {masq}")
    w.rule("masquerading", "masquerade fully-random")
    w.out.append(f'add set {t} cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}')
    w.rule(
        "cluster-ips-check",
        f"{ipx} daddr @cluster-ips reject",
        "Reject traffic to invalid ports of ClusterIPs",
    )
    if svc_cidrs:
        w.rule(
            "cluster-ips-check",
            f"{ipx} daddr {{ {', '.join(svc_cidrs)} }} drop",
            "Drop traffic to unallocated ClusterIPs",
        )
    # nodeport-ips: nodePortAddresses unset (MatchAll), so upstream adds and deletes it.
    vmap3 = f"{addr_type} . inet_proto . inet_service : verdict"
    w.out.append(
        f"add map {t} no-endpoint-services {{ type {vmap3} ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }'
    )
    w.out.append(
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }'
    )
    w.chain("reject-chain", "helper for @no-endpoint-services / @no-endpoint-nodeports")
    w.rule("reject-chain", "reject")
    w.rule(
        "service-endpoints-check",
        f"{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services",
    )
    w.rule(
        "nodeport-endpoints-check",
        f"{no_localhost} meta l4proto . th dport vmap @no-endpoint-nodeports",
    )
    w.out.append(
        f"add map {t} firewall-ips {{ type {vmap3} ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }'
    )
    w.rule("firewall-check", f"{ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
    w.out.append(
        f"add map {t} service-ips {{ type {vmap3} ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }'
    )
    w.out.append(
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }'
    )
    w.rule("services", f"{ipx} daddr . meta l4proto . th dport vmap @service-ips")
    w.rule(
        "services",
        f"fib daddr type local {no_localhost} meta l4proto . th dport vmap @service-nodeports",
    )


def _nft_service(w: _Nft, plan: _Plan, cluster_cidr: str) -> None:
    """The per-service-port part of syncProxyRules (nftables): captures, then chains."""
    svc = plan.svc
    proto = svc.protocol
    name = svc.port_name_string
    names = nft_service_chains(svc)
    svc_chain, local_chain, ext_chain = names["service"], names["local"], names["external"]
    for ep in plan.reachable_eps:
        w.chain(nft_endpoint_chain(svc, ep))
    if plan.uses_cluster_chain:
        w.chain(svc_chain)
    if plan.uses_local_chain:
        w.chain(local_chain)
    if plan.uses_external_chain:
        w.chain(ext_chain)
    if not plan.has_endpoints:
        int_verdict = ext_verdict = "goto reject-chain"
    else:
        int_verdict, ext_verdict = "", "drop"

    w.element("cluster-ips", svc.cluster_ip)
    key = f"{svc.cluster_ip} . {proto} . {svc.port}"
    if plan.has_endpoints:
        w.element("service-ips", key, f"goto {svc_chain}")
    else:
        w.element("no-endpoint-services", key, int_verdict, name)
    for ip in plan.external_ips:
        key = f"{ip} . {proto} . {svc.port}"
        if plan.has_endpoints:
            w.element("service-ips", key, f"goto {ext_chain}")
        if not plan.has_external_endpoints:
            w.element("no-endpoint-services", key, ext_verdict, name)
    for ip in plan.lb_ips:
        if plan.has_endpoints:
            w.element("service-ips", f"{ip} . {proto} . {svc.port}", f"goto {ext_chain}")
    if not plan.has_external_endpoints:
        for ip in plan.lb_ips:
            w.element("no-endpoint-services", f"{ip} . {proto} . {svc.port}", ext_verdict, name)
    if svc.node_port:
        key = f"{proto} . {svc.node_port}"
        if plan.has_endpoints:
            w.element("service-nodeports", key, f"goto {ext_chain}")
        if not plan.has_external_endpoints:
            w.element("no-endpoint-nodeports", key, ext_verdict, name)

    _nft_service_chains(w, plan, cluster_cidr)


def _nft_service_chains(w: _Nft, plan: _Plan, cluster_cidr: str) -> None:
    """Rules of the service-/local-/external-/endpoint- chains of one service port."""
    ipx = w.ipx
    svc = plan.svc
    proto = svc.protocol
    names = nft_service_chains(svc)
    svc_chain, local_chain, ext_chain = names["service"], names["local"], names["external"]
    ext_policy_chain = local_chain if plan.external_policy_local else svc_chain
    if plan.has_endpoints and cluster_cidr:
        w.rule(
            svc_chain,
            f"{ipx} daddr {svc.cluster_ip} {proto} dport {svc.port} "
            f"{ipx} saddr != {cluster_cidr} jump mark-for-masquerade",
        )
    if plan.uses_external_chain:
        if not plan.external_policy_local:
            w.rule(ext_chain, "jump mark-for-masquerade")
        else:
            if cluster_cidr:
                w.rule(
                    ext_chain,
                    f"{ipx} saddr {cluster_cidr} goto {svc_chain}",
                    "short-circuit pod traffic",
                )
            w.rule(
                ext_chain,
                "fib saddr type local jump mark-for-masquerade",
                "masquerade local traffic",
            )
            w.rule(
                ext_chain,
                f"fib saddr type local goto {svc_chain}",
                "short-circuit local traffic",
            )
        if plan.has_external_endpoints:
            w.rule(ext_chain, f"goto {ext_policy_chain}")
    for chain_name, eps, used in (
        (svc_chain, plan.cluster_eps, plan.uses_cluster_chain),
        (local_chain, plan.local_eps, plan.uses_local_chain),
    ):
        if used:
            vmap = ", ".join(
                f"{i} : goto {nft_endpoint_chain(svc, ep)}" for i, ep in enumerate(eps)
            )
            w.rule(chain_name, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for ep in plan.reachable_eps:
        ep_chain = nft_endpoint_chain(svc, ep)
        w.rule(ep_chain, f"{ipx} saddr {ep[0]} jump mark-for-masquerade")
        w.rule(ep_chain, f"meta l4proto {proto} dnat to {_hostport(*ep)}")


def _nft_family(plans: list[_Plan], family: int, cluster_cidr: str, svc_cidrs: list[str]) -> str:
    w = _Nft(family)
    _nft_setup(w, family, svc_cidrs)
    for plan in plans:
        _nft_service(w, plan, cluster_cidr)
    return "\n".join(w.out) + "\n"


def nftables(
    services: Sequence[Service],
    cluster_cidrs: Sequence[str],
    *,
    service_cidrs: Sequence[str] = (),
) -> str:
    """An `nft -f` script (re)creating kube-proxy's `ip kube-proxy` and `ip6 kube-proxy`.

    Each table is added, deleted and defined again, so the script is idempotent and
    replaces only kube-proxy's own tables. `cluster_cidrs` is --cluster-cidr (one per
    family; a family without one gets no local-traffic detector), `service_cidrs` the
    ServiceCIDRs kube-proxy would learn from the API (for the unallocated-IP drop).
    """
    parts = []
    for family in (4, 6):
        cidr = _cidr_for(cluster_cidrs, family)
        svc_cidrs = [c for c in service_cidrs if ipaddress.ip_network(c).version == family]
        parts.append(_nft_family(_plans(services, family, cidr), family, cidr, svc_cidrs))
    return "".join(parts)


def nft_delete() -> str:
    """An `nft -f` script removing both kube-proxy tables (if present)."""
    return "".join(
        f"add table {ipx} {NFT_TABLE}\ndelete table {ipx} {NFT_TABLE}\n" for ipx in ("ip", "ip6")
    )
