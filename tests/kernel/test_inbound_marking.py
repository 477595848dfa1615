"""Which incoming connections get the marks, on the real kernel.

A host namespace with our table and a client namespace joined by a veth (the LAN) and
a second veth named like Mullvad's tunnel. An observer table in the host records, per
(destination, port), the packets that reached input carrying both marks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Netns

pytestmark = pytest.mark.kernel

OBSERVER = """
table inet observe {
  set seen4 { type ipv4_addr . inet_service; }
  set seen6 { type ipv6_addr . inet_service; }
  chain input { type filter hook input priority 10; policy accept;
    ct mark 0x00000f41 meta mark 0x6d6f6c65 tcp flags syn add @seen4 { ip daddr . tcp dport }
    ct mark 0x00000f41 meta mark 0x6d6f6c65 tcp flags syn add @seen6 { ip6 daddr . tcp dport }
  }
}
"""

PROBE = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.settimeout(0.5)\n"
    "try: s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "except OSError: pass\n"
)


@pytest.fixture
def lab(netns_factory: Callable[[str], Netns], tmp_path: Path) -> tuple[Netns, Netns, Path]:
    host, client = netns_factory("host"), netns_factory("cli")
    for name, peer in (("eth0", "lan0"), ("wg0-mullvad", "tun0")):
        host.sh(f"ip link add {name} type veth peer name {peer} netns {client.name}")
    host.sh(
        "ip addr add 192.168.50.2/24 dev eth0 && ip addr add 2001:db8:50::2/64 dev eth0 nodad "
        "&& ip addr add 10.99.0.2/32 dev wg0-mullvad && ip link set eth0 up "
        "&& ip link set wg0-mullvad up && ip route add 10.99.0.1/32 dev wg0-mullvad"
    )
    client.sh(
        "ip addr add 192.168.50.1/24 dev lan0 && ip addr add 2001:db8:50::1/64 dev lan0 nodad "
        "&& ip addr add 10.99.0.1/32 dev tun0 && ip link set lan0 up && ip link set tun0 up"
    )
    host.sh(f"nft -f - <<'EOF'\n{OBSERVER}\nEOF")
    out = tmp_path / "k8s.nft"
    result = host.cli("apply", "--settings", "none", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return host, client, out


def probe(client: Netns, address: str, port: int) -> None:
    client.sh(f'python3 -c "{PROBE}" {address} {port}')


def seen(host: Netns) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for family in ("seen4", "seen6"):
        data = json.loads(host.nft_json(f"list set inet observe {family}"))
        for item in data["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                address, port = elem["concat"]
                out.add((address, port))
    return out


def test_connections_to_machine_addresses_on_service_ports_get_both_marks(
    lab: tuple[Netns, Netns, Path],
) -> None:
    host, client, _ = lab
    probe(client, "192.168.50.2", 30080)  # NodePort
    probe(client, "192.168.50.2", 6443)  # API server
    probe(client, "2001:db8:50::2", 443)  # ingress over IPv6
    probe(client, "192.168.50.2", 40000)  # ephemeral port: never
    assert seen(host) == {("192.168.50.2", 30080), ("192.168.50.2", 6443), ("2001:db8:50::2", 443)}


def test_tunnel_address_and_tunnel_interface_are_never_exempted(
    lab: tuple[Netns, Netns, Path],
) -> None:
    host, client, _ = lab
    # From the LAN to the tunnel's own address (the CVE-2019-14899 probe): not on eth0.
    client.sh("ip route add 10.99.0.2/32 dev lan0")
    probe(client, "10.99.0.2", 30080)
    # Arriving through the tunnel interface, even to the LAN address.
    client.sh(
        "ip route del 10.99.0.2/32 dev lan0 && ip route add 10.99.0.2/32 dev tun0 "
        "&& ip route replace 192.168.50.2/32 dev tun0 src 10.99.0.1"
    )
    probe(client, "10.99.0.2", 30081)
    probe(client, "192.168.50.2", 30082)
    assert seen(host) == set()


def test_a_new_dhcp_address_needs_no_regeneration(lab: tuple[Netns, Netns, Path]) -> None:
    host, client, out = lab
    before = out.read_text()
    host.sh("ip addr flush dev eth0 scope global && ip addr add 192.168.50.77/24 dev eth0")
    probe(client, "192.168.50.77", 30080)
    assert seen(host) == {("192.168.50.77", 30080)}
    assert out.read_text() == before


def test_explicit_machine_addresses_mark_only_those(
    lab: tuple[Netns, Netns, Path], tmp_path: Path
) -> None:
    host, client, _ = lab
    host.sh("ip addr add 192.168.50.3/24 dev eth0")
    result = host.cli(
        "apply",
        "--settings",
        "none",
        "--output",
        str(tmp_path / "b.nft"),
        "--machine-addresses",
        "192.168.50.3",
        "--inbound-ports",
        "30000-32767",
    )
    assert result.returncode == 0, result.stderr
    probe(client, "192.168.50.2", 30080)
    probe(client, "192.168.50.3", 30080)
    probe(client, "192.168.50.3", 6443)  # not in INBOUND_PORTS
    assert seen(host) == {("192.168.50.3", 30080)}
