"""`doctor`: is this machine able to use the bypass, and if not, what to do about it.

Each check returns findings with a level and a concrete fix, so the output is a to-do
list rather than a diagnosis to interpret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import netaddr

from . import host_firewalls, marks, mullvad_state, nft, presets, ruleset
from .facts import MachineFacts
from .settings import IGNORED_SOURCE, NO_CLUSTER_FOUND, Settings

OK, WARN, ERROR = "ok", "warning", "error"


class Finding(NamedTuple):
    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.level}] {self.message}"
        return f"{text}\n        fix: {self.fix}" if self.fix else text


Lister = Callable[[str, str], list[dict[str, Any]]]


def _rules(table: list[dict[str, Any]], chain: str) -> list[str]:
    return [
        json.dumps(item["rule"].get("expr", []), sort_keys=True)
        for item in table
        if "rule" in item and item["rule"].get("chain") == chain
    ]


def _accepts_ct_mark(rule: str) -> bool:
    return '"key": "mark"' in rule and str(marks.CT_MARK.value) in rule and '"accept"' in rule


def check_mullvad(table: list[dict[str, Any]]) -> list[Finding]:
    """Mullvad's table exists and its chains honour the split-tunnel ct mark."""
    if not table:
        return [
            Finding(
                WARN,
                "Mullvad's firewall table (inet mullvad) is not loaded: Mullvad is disconnected "
                "(without lockdown mode) or not running, so nothing blocks the cluster now.",
                "nothing to do; the bypass takes effect when Mullvad connects",
            )
        ]
    honoured = {
        chain: any(_accepts_ct_mark(r) for r in _rules(table, chain))
        for chain in ("input", "output", "forward")
    }
    if not any(honoured.values()):
        return [
            Finding(
                ERROR,
                f"Mullvad's chains have no `ct mark {marks.CT_MARK.nft} accept` rules: split "
                "tunnelling is unavailable (no net_cls cgroup v1 or cgroup2 support), so the "
                "bypass cannot work.",
                mullvad_state.NO_SPLIT_FIX,
            )
        ]
    out: list[Finding] = []
    for chain, ok in honoured.items():
        if ok:
            out.append(Finding(OK, f"Mullvad's {chain} chain accepts ct mark {marks.CT_MARK.nft}"))
        else:
            out.append(
                Finding(
                    ERROR,
                    f"Mullvad's {chain} chain has no `ct mark {marks.CT_MARK.nft} accept` rule "
                    "while its other chains have one: this Mullvad is older than 2023.5 "
                    "(mullvadvpn-app PR #5011), so pod traffic cannot be exempted.",
                    "update the Mullvad app",
                )
            )
    return out


def check_mullvad_state(
    settings: Settings,
    facts: MachineFacts,
    table: list[dict[str, Any]],
    run: mullvad_state.Runner | None = None,
) -> list[Finding]:
    """Mullvad's state in words: from its table, and from its daemon where the CLI is."""
    if run is None:
        from .detect import boundary  # noqa: PLC0415  (start-up time)

        run = boundary.run
    out: list[Finding] = []
    said = mullvad_state.daemon_says(run)
    if said.get("status") or said.get("Current version"):
        version = said.get("Current version", "unknown")
        if said.get("mullvad-daemon version"):
            version += f" (daemon {said['mullvad-daemon version']})"
        out.append(Finding(OK, f"Mullvad {version}: {said.get('status', 'no status')}"))
    elif said.get("error"):
        out.append(Finding(WARN, f"the mullvad CLI did not answer: {said['error']}"))
    if table:
        tunnel = settings.tunnel_interface
        addresses = facts.interface_addresses(tunnel)
        line = mullvad_state.describe(table, tunnel, mullvad_allows_lan(table), addresses)
        out.append(Finding(OK, line))
    return out


def check_host_firewalls(settings: Settings, whole: list[dict[str, Any]]) -> list[Finding]:
    """ufw, firewalld, NixOS' firewall or an nftables input policy that drops HOST_PORTS or
    (for a cluster on this machine) the NodePort range: the command that opens each."""
    wanted = [("HOST_PORTS", (low, high)) for low, high in settings.host_ports]
    if settings.pod_cidrs or settings.service_cidrs:  # kube-proxy on this machine
        wanted.append(("NodePorts", host_firewalls.NODE_PORTS))
    ours = {marks.TABLE_NAME, marks.MULLVAD_TABLE[1]}
    closed = host_firewalls.closed_ports(whole, wanted, ours, nft.table_text)
    if not closed:
        return [Finding(OK, "no other input filter drops HOST_PORTS or the NodePort range")]
    return [Finding(WARN, host_firewalls.describe(c), c.command) for c in closed]


def mullvad_allows_lan(table: list[dict[str, Any]]) -> bool:
    """Local network sharing adds input accepts for the private ranges (fc00::/7 among them)."""
    return any('"fc00::"' in r and '"accept"' in r for r in _rules(table, "input"))


def check_ipv6_lan(settings: Settings, table: list[dict[str, Any]]) -> list[Finding]:
    """IPv6 pods and nodes need Mullvad's LAN sharing to reach this machine: their
    neighbour discovery cannot be marked."""
    pods = any(n.version == 6 for n in settings.pod_cidrs)
    nodes = any(n.version == 6 for n, _ in settings.node_networks)
    if not table or not (pods or nodes):
        return []
    who = " and ".join(w for w, on in (("pods", pods), ("nodes", nodes)) if on)
    if mullvad_allows_lan(table):
        return [
            Finding(OK, f"Mullvad's local network sharing is on (IPv6 {who} can reach the node)")
        ]
    what = " and ".join(
        w for w, on in (("pod ranges", pods), ("node networks (NODE_NETWORKS)", nodes)) if on
    )
    cannot = []
    if pods:
        cannot.append("IPv6 pods cannot reach the node.")
    if nodes:
        cannot.append(
            "IPv6 nodes reach this machine (their gateway's DNS too) only after it spoke to "
            "them first; between nodes, on their bridge, IPv6 works."
        )
    return [
        Finding(
            WARN,
            f"IPv6 {what} are set but Mullvad's local network sharing is off: {who} send "
            "neighbour discovery from their ULA addresses, Mullvad's input chain accepts it "
            "only from fe80::/10, and neighbour discovery is not conntracked, so no mark can "
            "exempt it. " + " ".join(cannot),
            "mullvad lan set allow",
        )
    ]


def check_kernel(settings: Settings, facts: MachineFacts) -> list[Finding]:
    out: list[Finding] = []
    value = facts.sysctl("net.bridge.bridge-nf-call-iptables")
    if value is None:
        out.append(
            Finding(
                WARN,
                "br_netfilter is not loaded: pod-to-pod traffic on a bridge skips nftables.",
                "modprobe br_netfilter (Kubernetes needs it; kubeadm's preflight checks it)",
            )
        )
    elif value != "1":
        out.append(
            Finding(
                WARN,
                "net.bridge.bridge-nf-call-iptables=0: bridged pod traffic bypasses every "
                "firewall, kube-proxy's too.",
                "sysctl -w net.bridge.bridge-nf-call-iptables=1 (the Kubernetes default)",
            )
        )
    else:
        out.append(Finding(OK, "br_netfilter passes bridged pod and node traffic to nftables"))
    if settings.bridge_table and not nft.bridge_conntrack_supported():
        out.append(
            Finding(
                ERROR,
                "BRIDGE_TABLE=yes but this kernel lacks nf_conntrack_bridge "
                "(CONFIG_NF_CONNTRACK_BRIDGE): `ct` in a bridge table fails to load.",
                "set BRIDGE_TABLE=no; with br_netfilter the inet table covers bridged traffic",
            )
        )
    rp = facts.sysctl("net.ipv4.conf.all.rp_filter")
    valid_mark = facts.sysctl("net.ipv4.conf.all.src_valid_mark")
    if rp == "1" and valid_mark != "1":
        out.append(
            Finding(
                WARN,
                "strict rp_filter with src_valid_mark=0 drops marked replies' reverse path.",
                "sysctl -w net.ipv4.conf.all.src_valid_mark=1 (Mullvad sets it when connecting)",
            )
        )
    try:
        nft.check(ruleset.render(settings))
        out.append(Finding(OK, "the kernel accepts the generated ruleset (nft --check)"))
    except nft.NftError as err:
        out.append(
            Finding(
                ERROR,
                f"the kernel refuses the generated ruleset: {err}",
                "report this with the output of `mullvad-allow-k8s generate`",
            )
        )
    return out


def check_addresses(settings: Settings, facts: MachineFacts) -> list[Finding]:
    out: list[Finding] = []
    tunnel = settings.tunnel_interface
    if facts.has_interface(tunnel):
        out.append(Finding(OK, f"tunnel interface {tunnel} exists"))
    else:
        out.append(
            Finding(
                WARN,
                f"tunnel interface {tunnel} does not exist (Mullvad disconnected?)",
                "connect Mullvad, or set TUNNEL_INTERFACE if it is named differently",
            )
        )
    cluster = netaddr.IPSet(settings.pod_cidrs) | netaddr.IPSet(settings.service_cidrs)
    for ip in facts.interface_addresses(tunnel):
        if ip in cluster:
            out.append(
                Finding(
                    WARN,
                    f"the tunnel address {ip} lies inside the cluster ranges; it is protected "
                    "only while loaded by `apply` after Mullvad connected.",
                    "run `mullvad-allow-k8s apply` after connecting, or use other cluster ranges",
                )
            )
    machine = facts.machine_addresses(tunnel)
    clashes = [ip for ip in machine if ip in cluster]
    if clashes:
        out.append(
            Finding(
                ERROR,
                f"machine addresses {_join(clashes)} lie inside the cluster ranges",
                "fix POD_CIDRS/SERVICE_CIDRS to match the cluster's real ranges",
            )
        )
    shown = (
        _join(settings.machine_addresses)
        if settings.machine_addresses
        else (f"auto (now: {_join(machine) or 'none'})")
    )
    out.append(Finding(OK, f"machine addresses: {shown}"))
    return out


def check_exposed_services(settings: Settings, facts: MachineFacts) -> list[Finding]:
    """The host's listening sockets that this table makes reachable from outside.

    Only HOST_PORTS are: every other listener (sshd, CUPS, a database) stays under
    Mullvad's rules, so this list should hold only the cluster's own servers.
    """
    ports = settings.host_ports
    shown = settings.as_strings()["HOST_PORTS"]
    machine = settings.machine_addresses
    if machine is None:
        machine = tuple(facts.machine_addresses(settings.tunnel_interface))
    reachable = set(machine) | set(settings.public_addresses)
    exposed = [
        (ip, port)
        for ip, port in facts.listening_tcp()
        if any(lo <= port <= hi for lo, hi in ports) and (int(ip) == 0 or ip in reachable)
    ]
    out = [Finding(OK, f"host ports exempted (HOST_PORTS, TCP): {shown}")]
    if exposed:
        where = ", ".join(
            f"{'*' if int(ip) == 0 else ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
            for ip, port in exposed
        )
        out.append(
            Finding(
                OK,
                f"listening sockets this table makes reachable from outside: {where} "
                "(every other listener stays under Mullvad's rules)",
            )
        )
    else:
        out.append(
            Finding(
                OK,
                "no listening socket of this machine is made reachable from outside by this "
                "table (nothing listens on HOST_PORTS)",
            )
        )
    return out


def check_overlaps(settings: Settings, facts: MachineFacts) -> list[Finding]:
    """Cluster ranges overlapping a network outside the cluster (apply refuses them)."""
    from .overlap import lan_overlaps  # noqa: PLC0415

    errors = lan_overlaps(settings, facts.networks())
    if not errors:
        return [Finding(OK, "no cluster range overlaps a network of a non-cluster interface")]
    return [
        Finding(ERROR, str(err), "set POD_CIDRS/SERVICE_CIDRS to the cluster's real ranges")
        for err in errors
    ]


def check_cluster_ranges(settings: Settings, facts: MachineFacts) -> list[Finding]:
    """Where the auto values came from, node networks whose bridge is gone, and ranges in
    Mullvad's tunnel address pool."""
    findings = [
        Finding(
            WARN,
            line,
            "start the cluster and run `mullvad-allow-k8s apply` (mullvad-allow-k8s-follow"
            ".service does it), or set PRESET or the ranges",
        )
        if NO_CLUSTER_FOUND in line
        else Finding(
            WARN,
            line,
            "root decides only from files root owns and from root's engines (README, "
            "Detection): fix the owner or mode if this is root's, or set the ranges",
        )
        if line.startswith(IGNORED_SOURCE)
        else Finding(OK, f"detected: {line}")
        for line in settings.origins
    ]
    for net, iface in settings.node_networks:
        if not iface.endswith("*") and not facts.has_interface(iface):
            findings.append(
                Finding(
                    WARN,
                    f"node network {net}@{iface}: there is no interface {iface} (the cluster "
                    "is stopped or gone); nothing is exempted for it until it is back",
                    "after recreating the cluster: `mullvad-allow-k8s apply` (mullvad-allow-"
                    "k8s-follow.service does it)",
                )
            )
    pool = netaddr.IPSet([marks.TUNNEL_POOL_V4])
    kinds = [
        *((net, "pods") for net in settings.pod_cidrs),
        *((net, "services") for net in settings.service_cidrs),
        *((net, "nodes") for net, _ in settings.node_networks),
    ]
    for net, kind in kinds:
        if netaddr.IPSet([net]) & pool:
            findings.append(
                Finding(
                    WARN,
                    f"{net} lies in {marks.TUNNEL_POOL_V4}, where Mullvad takes the tunnel's "
                    "own address from: that address stays protected, but if it falls inside "
                    f"{net} its route and the cluster's clash",
                    "if the cluster misbehaves while Mullvad is connected, give it a range "
                    f"outside {marks.TUNNEL_POOL_V4}: {_where_to_change(settings, kind)}",
                )
            )
    findings += _ipvs_in_tunnel_pool(facts, pool)
    return findings


IPVS_INTERFACE = "kube-ipvs0"  # kube-proxy's IPVS mode puts every ClusterIP on it


def _ipvs_in_tunnel_pool(facts: MachineFacts, pool: netaddr.IPSet) -> list[Finding]:
    """ClusterIPs that are local addresses in Mullvad's pool: the table withdraws a pod's
    exemption to a local address there that is not on its own interface (the tunnel's
    address, whatever it is now), and cannot tell such a ClusterIP from it."""
    local = [ip for ip in facts.interface_addresses(IPVS_INTERFACE) if ip in pool]
    if not local:
        return []
    return [
        Finding(
            ERROR,
            f"kube-proxy's IPVS mode holds ClusterIPs in {marks.TUNNEL_POOL_V4} on "
            f"{IPVS_INTERFACE} ({_join(local[:3])}{', ...' if len(local) > 3 else ''}): "
            "pods cannot reach them with Mullvad running (the table protects every local "
            f"address in {marks.TUNNEL_POOL_V4} that is not on the pod's interface, since "
            "the tunnel's own address comes from there)",
            "give the cluster a service range outside 10.64.0.0/10 (kubeadm "
            "--service-cidr, networking.serviceSubnet) or run kube-proxy in iptables or "
            "nftables mode (KubeProxyConfiguration mode)",
        )
    ]


def _where_to_change(settings: Settings, kind: str) -> str:
    """The setting of the cluster's own distribution for this kind of range."""
    names = [settings.preset]
    for line in settings.origins:
        if line.startswith("PRESET=auto: found "):
            names = line.removeprefix("PRESET=auto: found ").split(", ")
    said = [
        presets.RANGE_SETTINGS[n][kind] for n in names if kind in presets.RANGE_SETTINGS.get(n, {})
    ]
    if said:
        return "; ".join(dict.fromkeys(said))
    if kind == "nodes":
        return "the engine's network with another subnet (`podman network create --subnet`)"
    return f"the cluster's own setting for its {kind} range"


def _join(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


def run(
    settings: Settings,
    facts: MachineFacts,
    lister: Lister = nft.table_json,
    run: mullvad_state.Runner | None = None,
) -> list[Finding]:
    """All checks; reads only, changes nothing. `run`: how programs are run (the trust
    boundary's runner unless a test gives another)."""
    findings: list[Finding] = []
    try:
        findings.append(Finding(OK, f"nftables access through {nft.backend().name}"))
        if nft.can_admin_network():
            mullvad = lister(*marks.MULLVAD_TABLE)
            findings += check_mullvad(mullvad)
            findings += check_mullvad_state(settings, facts, mullvad, run)
            findings += check_ipv6_lan(settings, mullvad)
            findings += check_host_firewalls(settings, nft.ruleset_json())
        else:
            findings.append(
                Finding(WARN, "not root: Mullvad's table cannot be inspected", "run doctor as root")
            )
    except nft.NftError as err:
        findings.append(Finding(ERROR, str(err), "apt install python3-nftables nftables"))
    findings += check_cluster_ranges(settings, facts)
    findings += check_kernel(settings, facts)
    findings += check_addresses(settings, facts)
    findings += check_overlaps(settings, facts)
    findings += check_exposed_services(settings, facts)
    return findings
