"""Emulation of the Mullvad VPN app's Linux firewall (`inet mullvad`) and policy routing.

Rule for rule, in the order `talpid-core/src/firewall/linux.rs` (`PolicyBatch::finalize`)
adds them, as described in shared/notes/mullvad.md sections 1 and 2: the chains,
hooks, priorities and policies of §1.1, the building blocks of §1.3 in insertion order,
the per-state rules of §1.4. Switches: state (connected | blocked), allow LAN, and
whether split tunnelling is available (without it the ct-mark rules are absent).

Translation notes (behaviour is identical):
* Mullvad matches interfaces by index (`meta iif`/`oif`); nft prints and accepts the
  same as `iif "wg0-mullvad"`, resolved to the index at load time, so the tunnel must
  exist when a connected ruleset is loaded, as in the app (`check_iface`).
* Mullvad's final reject is nftnl's `Reject(Icmp(PortUnreach))`, which in an inet
  table is the family-agnostic ICMPX port-unreachable: nft's plain `reject`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TUNNEL = "wg0-mullvad"
FWMARK = "0x6d6f6c65"
TABLE_ID = 1836018789
CT_MARK = "0x00000f41"
NET_CLS_CLASSID = 5087041
TUN = f'"{TUNNEL}"'

LAN_NETS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
)
LAN_MULTICAST_NETS = (
    "255.255.255.255/32",
    "224.0.0.0/24",
    "239.0.0.0/8",
    "ff01::/16",
    "ff02::/16",
    "ff03::/16",
    "ff04::/16",
    "ff05::/16",
)
DHCPV6_SERVERS = ("ff02::1:2", "ff05::1:3")


@dataclass(frozen=True)
class MullvadState:
    """What the app would be doing: tunnel state and the two switches that shape rules."""

    state: str = "connected"  # "connected" or "blocked"
    allow_lan: bool = False
    split: bool = True

    def __post_init__(self) -> None:
        if self.state not in ("connected", "blocked"):
            raise ValueError(f"unknown Mullvad state {self.state!r}")

    @property
    def label(self) -> str:
        lan = "lan_on" if self.allow_lan else "lan_off"
        split = "" if self.split else "-no_split"
        return f"{self.state}-{lan}{split}"


@dataclass(frozen=True)
class Tunnel:
    """The connected tunnel's parameters (what the relay list and WireGuard config give)."""

    ips: tuple[str, ...]  # the tunnel interface's own addresses
    dns: tuple[str, ...]  # in-tunnel resolvers (the relay gateways)
    relay: str  # relay endpoint address
    relay_port: int = 51820


def _net(addr: str) -> str:
    return "ip6" if ":" in addr else "ip"


@dataclass
class _Batch:
    """The chains' rules in insertion order; one method per block of `finalize`."""

    st: MullvadState
    tunnel: Tunnel
    pre: list[str] = field(default_factory=list)
    out: list[str] = field(default_factory=list)
    inp: list[str] = field(default_factory=list)
    fwd: list[str] = field(default_factory=list)
    mangle: list[str] = field(default_factory=list)
    nat: list[str] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.st.state == "connected"

    def loopback(self) -> None:
        self.out.append('oif "lo" accept')
        self.inp.append('iif "lo" accept')

    def split_tunneling(self) -> None:
        if self.connected:
            for server in self.tunnel.dns:
                for proto in ("udp", "tcp"):
                    self.mangle.append(
                        f"oif {TUN} {proto} dport 53 {_net(server)} daddr {server} accept"
                    )
        self.mangle.append(
            f"meta cgroup {NET_CLS_CLASSID} ct mark set {CT_MARK} meta mark set {FWMARK}"
        )
        for chain in (self.inp, self.out, self.fwd):
            chain.append(f"ct mark {CT_MARK} accept")
        if self.connected:
            self.nat.append(f"oif {TUN} ct mark {CT_MARK} drop")
        self.nat.append(f'oif != "lo" ct mark {CT_MARK} masquerade')
        if self.connected:
            self.pre.append(f"iif != {TUN} ct mark {CT_MARK} meta mark set {FWMARK}")

    def dhcp_client(self) -> None:
        for chain in (self.out, self.fwd):
            chain.append("udp sport 68 ip daddr 255.255.255.255 udp dport 67 accept")
        for chain in (self.inp, self.fwd):
            chain.append("udp sport 67 udp dport 68 accept")
        for chain in (self.out, self.fwd):
            for server in DHCPV6_SERVERS:
                chain.append(
                    f"ip6 saddr fe80::/10 udp sport 546 ip6 daddr {server} udp dport 547 accept"
                )
        for chain in (self.inp, self.fwd):
            chain.append(
                "ip6 saddr fe80::/10 udp sport 547 ip6 daddr fe80::/10 udp dport 546 accept"
            )

    def ndp(self) -> None:
        """Router/neighbour discovery, ICMPv6 code 0 only; every rule also in forward."""
        out, inp = (self.out, self.fwd), (self.inp, self.fwd)
        rules = [
            (out, "ip6 daddr ff02::2", "nd-router-solicit"),
            (inp, "ip6 saddr fe80::/10", "nd-router-advert"),
            (inp, "ip6 saddr fe80::/10", "nd-redirect"),
            (out, "ip6 daddr ff02::1:ff00:0/104", "nd-neighbor-solicit"),
            (out, "ip6 daddr fe80::/10", "nd-neighbor-solicit"),
            (inp, "ip6 saddr fe80::/10", "nd-neighbor-solicit"),
            (out, "ip6 daddr fe80::/10", "nd-neighbor-advert"),
            (inp, "", "nd-neighbor-advert"),  # in from any source
        ]
        for chains, match, icmp_type in rules:
            for chain in chains:
                rule = f"icmpv6 type {icmp_type} icmpv6 code 0 accept"
                chain.append(f"{match} {rule}" if match else rule)

    def drop_dns(self) -> None:
        for chain in (self.out, self.fwd):
            chain.append("udp dport 53 reject")
            chain.append("tcp dport 53 reject with tcp reset")

    def policy_specific(self) -> None:
        if not self.connected:  # Blocked: no tunnel, relay or prerouting rules
            self.drop_dns()
            return
        t = self.tunnel
        relay = f"{_net(t.relay)} saddr {t.relay} udp sport {t.relay_port}"
        self.pre.append(f"{relay} meta mark set {FWMARK}")
        self.inp.append(f"{relay} ct state established accept")
        self.out.append(
            f"{_net(t.relay)} daddr {t.relay} udp dport {t.relay_port} meta mark {FWMARK} accept"
        )
        for server in t.dns:
            for proto in ("udp", "tcp"):
                for chain in (self.out, self.fwd):
                    chain.append(f"oif {TUN} {proto} dport 53 {_net(server)} daddr {server} accept")
        self.drop_dns()  # before the tunnel and LAN accepts: no DNS leaks through them
        self.out.append(f"oif {TUN} accept")
        self.fwd.append(f"oif {TUN} accept")
        self.inp.append(f"iif {TUN} accept")
        self.fwd.append(f"iif {TUN} ct state established accept")
        if self.st.allow_lan:  # CVE-2019-14899: after the tunnel accept, before LAN
            for ip in t.ips:
                self.inp.append(f"{_net(ip)} daddr {ip} drop")

    def allow_lan(self) -> None:
        for chain in (self.out, self.fwd):
            for net in LAN_NETS + LAN_MULTICAST_NETS:
                chain.append(f"{_net(net)} daddr {net} accept")
        for net in LAN_NETS:
            self.inp.append(f"{_net(net)} saddr {net} accept")
        self.out.append("udp sport 67 udp dport 68 accept")
        self.inp.append("udp sport 68 ip daddr 255.255.255.255 udp dport 67 accept")

    def text(self) -> str:
        def chain(name: str, head: str, rules: list[str]) -> str:
            body = "".join(f"\t\t{r}\n" for r in rules)
            return f"\tchain {name} {{\n\t\t{head}\n{body}\t}}\n"

        return (
            "table inet mullvad\ndelete table inet mullvad\n"
            "table inet mullvad {\n"
            + chain(
                "prerouting", "type filter hook prerouting priority -199; policy accept;", self.pre
            )
            + chain("output", "type filter hook output priority 0; policy drop;", self.out)
            + chain("input", "type filter hook input priority 0; policy drop;", self.inp)
            + chain("forward", "type filter hook forward priority 0; policy drop;", self.fwd)
            + chain("mangle", "type route hook output priority -150; policy accept;", self.mangle)
            + chain("nat", "type nat hook postrouting priority 100; policy accept;", self.nat)
            + "}\n"
        )


def ruleset(st: MullvadState, tunnel: Tunnel) -> str:
    """The `inet mullvad` table for `st`, as one nft transaction (add, delete, add)."""
    batch = _Batch(st, tunnel)
    batch.loopback()
    if st.split:
        batch.split_tunneling()
    batch.dhcp_client()
    batch.ndp()
    batch.policy_specific()
    if st.allow_lan:
        batch.allow_lan()
    for chain in (batch.out, batch.fwd):  # input has no final rule: its policy drops
        chain.append("reject")
    return batch.text()


def routing_up(gateways: tuple[str, ...]) -> tuple[str, str]:
    """`ip -b` scripts (IPv4, IPv6): Mullvad's routes and rules once the tunnel is up.

    Rules are added in the app's order without a priority (notes §2), so the kernel
    numbers them 32765 (`not fwmark ... lookup 1836018789`) and 32764
    (`suppress_prefixlength 0`). Gateways get main-table host routes via the tunnel.
    """
    v4 = [f"route add {gw} dev {TUNNEL}" for gw in gateways if ":" not in gw]
    v6 = [f"route add {gw} dev {TUNNEL}" for gw in gateways if ":" in gw]
    for lines in (v4, v6):
        lines += [
            f"route add default dev {TUNNEL} table {TABLE_ID}",
            f"rule add not fwmark {FWMARK} table {TABLE_ID}",
            "rule add table main suppress_prefixlength 0",
        ]
    return "\n".join(v4) + "\n", "\n".join(v6) + "\n"


def routing_down() -> str:
    """`ip -b` script (run once per family): what leaving Connected removes."""
    return (
        f"rule del not fwmark {FWMARK} table {TABLE_ID}\n"
        "rule del table main suppress_prefixlength 0\n"
    )


def kernel_config(st: MullvadState) -> dict[str, str | int]:
    """Sysctls the app sets (§1.7): src_valid_mark when connecting, arp_ignore=2."""
    if st.state == "connected":
        return {"net.ipv4.conf.all.src_valid_mark": 1, "net.ipv4.conf.all.arp_ignore": 2}
    return {}
