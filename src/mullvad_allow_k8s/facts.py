"""Everything read from the running machine, behind one small class.

The renderer stays pure: tests hand it fixed facts, the CLI hands it these.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import netaddr

# Interfaces that carry cluster or container traffic, never the machine's own
# LAN/public address: CNI bridges and overlays, kube-proxy's IPVS dummy, the bridges
# of Docker, Podman and libvirt.
CLUSTER_INTERFACE = re.compile(
    r"^(cni\d*|cbr\d+|flannel[.\w-]*|cali\w*|vxlan[.\w-]*|cilium\w*|lxc\w*|kube-\w+|"
    r"weave|datapath|tunl\d+|docker\d+|br-[0-9a-f]+|veth\w*|nodelocaldns|genev\w*|"
    r"bridge|podman\d+|cni-podman\d+|virbr\d+)$"
)


class MachineFacts:
    """Reads /proc and iproute2; `root` lets tests point it at a fake /proc tree."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self._addresses: list[dict[str, object]] | None = None

    def sysctl(self, name: str) -> str | None:
        """A sysctl value, or None where it does not exist (e.g. br_netfilter absent)."""
        path = self.root / "proc/sys" / name.replace(".", "/")
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def listening_tcp(self) -> list[tuple[netaddr.IPAddress, int]]:
        """(address, port) of TCP listening sockets not bound to loopback (/proc/net/tcp*).

        The address is the unspecified one (0.0.0.0 or ::) for wildcard listeners.
        """
        found: set[tuple[netaddr.IPAddress, int]] = set()
        for name in ("tcp", "tcp6"):
            try:
                lines = (self.root / "proc/net" / name).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                    continue
                address, _, port = fields[1].rpartition(":")
                ip = _proc_address(address)
                if ip is None or ip.is_loopback():
                    continue
                found.add((ip, int(port, 16)))
        return sorted(found, key=lambda item: (item[1], item[0].version, int(item[0])))

    def interfaces(self) -> list[dict[str, object]]:
        """`ip -j addr` output (empty when iproute2 is missing)."""
        if self._addresses is None:
            from .detect import boundary  # noqa: PLC0415  (start-up time of `generate`)

            try:
                result = boundary.run(("ip", "-j", "addr", "show"))
                out = result[1] if result is not None and result[0] == 0 else b"[]"
                self._addresses = json.loads(out or b"[]")
            except (OSError, boundary.UntrustedError, json.JSONDecodeError):
                self._addresses = []
        return self._addresses

    def interface_addresses(self, ifname: str) -> list[netaddr.IPAddress]:
        """Addresses configured on one interface (the tunnel's, to protect them)."""
        return [ip for name, ip in self._all_addresses() if name == ifname]

    def machine_addresses(self, tunnel: str) -> list[netaddr.IPAddress]:
        """What MACHINE_ADDRESSES=auto covers right now, for doctor and status output."""
        return [
            ip
            for name, ip in self._all_addresses()
            if name not in (tunnel, "lo")
            and not CLUSTER_INTERFACE.match(name)
            and not ip.is_link_local()
            and not ip.is_loopback()
        ]

    def networks(self) -> list[tuple[str, netaddr.IPNetwork]]:
        """(interface, network) of every configured address, e.g. ('eth0', 192.168.1.0/24)."""
        return [(name, net) for name, _, net in self._configured()]

    def has_interface(self, ifname: str) -> bool:
        return any(i.get("ifname") == ifname for i in self.interfaces())

    def _all_addresses(self) -> list[tuple[str, netaddr.IPAddress]]:
        return [(name, ip) for name, ip, _ in self._configured()]

    def _configured(self) -> list[tuple[str, netaddr.IPAddress, netaddr.IPNetwork]]:
        """(interface, address, its network) of every address `ip addr` lists."""
        out: list[tuple[str, netaddr.IPAddress, netaddr.IPNetwork]] = []
        for iface in self.interfaces():
            name = str(iface.get("ifname", ""))
            infos = iface.get("addr_info", [])
            for info in infos if isinstance(infos, list) else []:
                try:
                    ip = netaddr.IPAddress(str(info["local"]))
                    width = 32 if ip.version == 4 else 128
                    net = netaddr.IPNetwork(f"{ip}/{int(info.get('prefixlen', width))}")
                except (KeyError, TypeError, ValueError, netaddr.AddrFormatError):
                    continue
                out.append((name, ip, net))
        return out


def _proc_address(hexaddr: str) -> netaddr.IPAddress | None:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order."""
    try:
        words = [bytes.fromhex(hexaddr[i : i + 8]) for i in range(0, len(hexaddr), 8)]
    except ValueError:
        return None
    raw = b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
    if len(raw) not in (4, 16):
        return None
    ip = netaddr.IPAddress(int.from_bytes(raw, "big"), 4 if len(raw) == 4 else 6)
    return ip.ipv4() if ip.version == 6 and ip.is_ipv4_mapped() else ip
