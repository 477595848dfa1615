"""Mullvad's magic numbers and our chain priorities: the one place each value lives.

Every constant names the upstream source it comes from, so that a reader of the
generated ruleset (which cites these) can check them against a new Mullvad release.
"""

from __future__ import annotations

from typing import NamedTuple


class Constant(NamedTuple):
    """A value the ruleset depends on, with where it comes from."""

    value: int | str
    source: str
    hex: bool = True  # marks print as 0x%08x; priorities as plain numbers

    @property
    def nft(self) -> str:
        """The value as nft prints it (marks as 0x-prefixed hex, like `nft list`)."""
        if isinstance(self.value, str) or not self.hex:
            return str(self.value)
        return f"0x{self.value:08x}"


CT_MARK = Constant(
    0x00000F41,
    "mullvadvpn-app talpid-core/src/split_tunnel/linux/mod.rs MARK; Mullvad's input, output "
    "and forward chains accept `ct mark 0x00000f41` first",
)
FW_MARK = Constant(
    0x6D6F6C65,
    'mullvadvpn-app mullvad-types/src/lib.rs TUNNEL_FWMARK (b"mole"); '
    "`ip rule not fwmark 0x6d6f6c65 table 1836018789` sends unmarked packets into the tunnel",
)
TUNNEL_INTERFACE = Constant(
    "wg0-mullvad", "mullvadvpn-app talpid-wireguard/src/config.rs MULLVAD_INTERFACE_NAME"
)
NET_CLS_CLASSID = Constant(
    0x4D9F41,
    "mullvadvpn-app talpid-cgroup/src/v1.rs NET_CLS_CLASSID: the net_cls classid of the "
    "split tunnel's exclusion cgroup, matched by `meta cgroup` in Mullvad's mangle chain",
)
# Mullvad's own firewall table, `inet mullvad` (talpid-core/src/firewall/linux.rs).
MULLVAD_TABLE = ("inet", "mullvad")

# Chain priorities. Numbers, not names: nft 1.0.6 refuses some names on some hooks.
PREROUTING_PRIORITY = Constant(
    -151,
    "mangle - 1: after conntrack (-200) and Mullvad's prerouting (-199), so ct state is "
    "known; before kube-proxy's DNAT (-100), so the ClusterIP is still visible; before "
    "iptables' mangle table (-150) and NixOS' nftables rpfilter (-140), where "
    "reverse-path filters run, and before the routing decision, so both see the fwmark",
    hex=False,
)
OUTPUT_PRIORITY = Constant(
    -160,
    "mangle - 10: a route chain before kube-proxy's output DNAT (-100) and Mullvad's "
    "output filter (0); route type so a changed fwmark re-routes the packet",
    hex=False,
)
GUARD_PRIORITY = Constant(
    -10,
    "filter - 10: after DNAT (the real destination is known), before Mullvad's forward, "
    "input and output filters (0)",
    hex=False,
)
POSTROUTING_GUARD_PRIORITY = Constant(
    -10,
    "filter - 10 in postrouting: the interface is the one the packet really leaves by "
    "(after kube-proxy's DNAT and every re-route, which the output hook's interface does "
    "not follow); before `nat_park` (99) and the source NAT of Mullvad and kube-proxy "
    "(100)",
    hex=False,
)

CONFIRM_PRIORITY = Constant(
    -99,
    "dstnat + 1: right after kube-proxy's and the CNI portmap plugin's DNAT (-100), so "
    "the real destination of a new inbound connection is known, and still before the "
    "routing decision and the kernel's rp_filter, which must see the final fwmark",
    hex=False,
)
TENTATIVE_CT_MARK = Constant(
    0x00000F43,
    "ours, not Mullvad's (so Mullvad's chains never accept it): set on a new inbound "
    "connection before DNAT together with the fwmark, which reverse-path filters that "
    "run before DNAT (iptables' mangle rpfilter at -150, NixOS' nftables rpfilter at "
    "-140) need to see; the fwmark is taken back before DNAT, and the mark turned into "
    "0x00000f41 after DNAT only if the cluster serves the connection, otherwise cleared",
)
PARKED_CT_MARK = Constant(
    0x80000F41,
    "ours, not Mullvad's (Mullvad compares the whole mark): 0x00000f41 with bit 31 set, "
    "on the first packet of a pod-to-pod flow just before Mullvad's nat chain (srcnat, "
    "100), which then does not masquerade it (NAT is decided once per flow); the flow's "
    "next packet (a reply, a retransmission) meets our prerouting chain first, where one "
    "comparison with bit 31 masked off finds both marks and restores 0x00000f41, before "
    "Mullvad's filters see it",
)
CLUSTER_FLOW_LABEL = Constant(
    127,
    "ours (conntrack label bit; Mullvad uses none): set with the ct mark on a flow the "
    "cluster starts (a pod's, or this machine's to the cluster), so every later packet "
    "of it that arrives on an interface that is not the cluster's is known to be forged "
    "and dropped, with one comparison and one interface lookup",
    hex=False,
)
LOCAL_FLOW_LABEL = Constant(
    126,
    "ours (conntrack label bit): set, with the cluster flow label, on this machine's own "
    "new connections to the cluster; `nat_park` does not park them (their source, the "
    "bridge address, lies in the pod range too, and their next packets pass no "
    "prerouting, where a parked mark is given back)",
    hex=False,
)
NODE_LINK_LABEL = Constant(
    125,
    "ours (conntrack label bit): set, with the cluster flow label, on a flow whose first "
    "packet entered and left by the same node network bridge (NODE_NETWORKS: node to node, "
    "pod to pod across nodes, bridged with br_netfilter); `nat_park` parks it, so the "
    "nodes and pods see each other's real addresses",
    hex=False,
)
KEEP_SOURCE_LABEL = Constant(
    124,
    "ours (conntrack label bit): set in `confirm_served` on a new connection from outside "
    "that the cluster serves and that nothing marked at DNAT (kube-proxy and the CNI "
    "portmap plugin mark what they want masqueraded); `nat_park` binds its source NAT to "
    "the client's own address, so no masquerade (Mullvad's, or one for the bits of "
    "Mullvad's fwmark) hides it",
    hex=False,
)
BEFORE_DNAT_PRIORITY = Constant(
    -101,
    "dstnat - 1, a nat-type chain: the nat chains of a hook run, in their priority "
    "order, from the NAT core's own hook (-100 in prerouting), and only for a flow's "
    "first packet, until one of them binds the flow's NAT; so this one runs after the "
    "reverse-path filters that must see the tentative fwmark (-150, -140) and just "
    "before kube-proxy's and the CNI portmap plugin's DNAT chains (-100), where they "
    "mark a packet for masquerade (kube-proxy --masquerade-bit 14: 0x4000, "
    "pkg/proxy/{iptables,nftables}/proxier.go KUBE-MARK-MASQ / mark-for-masquerade; "
    "portmap markMasqBit 13: 0x2000, plugins/meta/portmap CNI-HOSTPORT-SETMARK; "
    "Podman's netavark likewise), both bits of Mullvad's fwmark 0x6d6f6c65",
    hex=False,
)
NAT_PARK_PRIORITY = Constant(
    99,
    "srcnat - 1: just before Mullvad's nat chain (100), which masquerades ct-marked flows; "
    "a nat-type chain, so only a flow's first packet meets it; it sets no NAT (every later "
    "NAT chain, Mullvad's, kube-proxy's, the CNI plugins', still runs) except the source "
    "NAT to the client's own address of a flow with the keep-source label, which binds "
    "the flow's source NAT so that no later chain changes it",
    hex=False,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "mullvad_allow_k8s"
BRIDGE_TABLE_NAME = "mullvad_allow_k8s"
# Every table this package owns: loaded by `apply`, deleted by `remove`.
OUR_TABLES: tuple[tuple[str, str], ...] = (
    (TABLE_FAMILY, TABLE_NAME),
    ("bridge", BRIDGE_TABLE_NAME),
)

# Tables of eat-correctly/mullvad-allow-k8s (k8s_bypass_mullvad.nft), deleted on load so
# that users of that file migrate by installing this package.
SEED_TABLES: tuple[tuple[str, str], ...] = (
    ("inet", "bypass-mullvad"),
    ("bridge", "k8s-bypass-mullvad"),
)

# Addresses that never get an exemption, whatever the cluster ranges say: Mullvad's
# in-tunnel gateway/resolver, its DNS content-blocker resolvers, its in-tunnel SOCKS5
# proxies and its IPv6 tunnel network (the tunnel's IPv6 addresses lie in it). The
# tunnel's own IPv4 addresses are matched per packet (TUNNEL_POOL_V4, see ruleset) and
# also added at load time by `apply` (ruleset.tunnel_elements).
PROTECTED_V4: tuple[str, ...] = ("10.64.0.1/32", "10.124.0.0/23", "100.64.0.0/24")
PROTECTED_V6: tuple[str, ...] = ("fc00:bbbb:bbbb:bb01::/64",)
PROTECTED_SOURCE = (
    "mullvadvpn-app mullvad-api/src/relay_list.rs (ipv4_gateway 10.64.0.1, ipv6_gateway "
    "fc00:bbbb:bbbb:bb01::1); mullvad-daemon/src/dns.rs (content-blocker resolvers "
    "100.64.0.x, DNS_BLOCKING_IP_BASE); talpid-tunnel/src/tun_provider/android/mod.rs "
    "(SOCKS_PROXIES 10.124.0.0/23, in-tunnel SOCKS5 proxies)"
)

# Where Mullvad takes its WireGuard tunnels' own IPv4 addresses from (the gateway
# 10.64.0.1 sits in it). A cluster range here is allowed (kubeadm's 10.96.0.0/12,
# Podman's 10.88.0.0/16 are engine defaults): the tunnel's current address is protected
# at load, but its routes may clash with the cluster's, which `doctor` says.
TUNNEL_POOL_V4 = "10.64.0.0/10"
TUNNEL_POOL_SOURCE = (
    "Mullvad's WireGuard tunnel addresses (10.64.0.0/10 around the gateway 10.64.0.1 of "
    "mullvad-api/src/relay_list.rs; mullvad/mullvadvpn-app#6243)"
)

# Private ranges a cluster CIDR must fall in: RFC 1918, RFC 6598 (shared address space,
# used by some CNIs) and RFC 4193 unique local IPv6 addresses.
PRIVATE_RANGES: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)

MARK_INDEX: tuple[tuple[str, Constant], ...] = (
    ("ct mark", CT_MARK),
    ("meta mark", FW_MARK),
    ("tunnel interface", TUNNEL_INTERFACE),
    ("prerouting priority", PREROUTING_PRIORITY),
    ("output priority", OUTPUT_PRIORITY),
    ("confirm priority", CONFIRM_PRIORITY),
    ("guard priority", GUARD_PRIORITY),
    ("postrouting guard priority", POSTROUTING_GUARD_PRIORITY),
    ("tentative ct mark", TENTATIVE_CT_MARK),
    ("parked ct mark", PARKED_CT_MARK),
    ("cluster flow ct label", CLUSTER_FLOW_LABEL),
    ("local flow ct label", LOCAL_FLOW_LABEL),
    ("node link ct label", NODE_LINK_LABEL),
    ("nat park priority", NAT_PARK_PRIORITY),
    ("keep source ct label", KEEP_SOURCE_LABEL),
    ("before dnat priority", BEFORE_DNAT_PRIORITY),
)

# Interfaces cluster traffic legitimately leaves by: CNI bridges and their veth ports,
# overlays and tunnels of the common CNIs (flannel, Calico, Cilium, kube-router, Weave,
# Antrea, OVN), minikube's bridge CNI (driver none: "bridge"), the bridges of Docker,
# Podman (netavark podmanN, CNI cni-podmanN) and libvirt (virbrN) that nodes of kind,
# k3d and minikube sit on. A marked cluster flow routed anywhere else (the LAN's
# default route, the tunnel) loses its exemption.
CLUSTER_INTERFACES: tuple[str, ...] = (
    "cni*",
    "cbr0",
    "veth*",
    "flannel*",
    "cali*",
    "vxlan.calico",
    "tunl0",
    "cilium_*",
    "lxc*",
    "kube-bridge",
    "kube-ipvs0",
    "weave",
    "genev*",
    "antrea-*",
    "ovn0",
    "docker0",
    "br-*",
    "bridge",
    "podman*",
    "virbr*",
)
