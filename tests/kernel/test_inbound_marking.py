"""Which incoming connections to this machine get the marks, on the real kernel.

A host namespace with our table and a client namespace joined by a veth (the LAN) and
a second veth named like Mullvad's tunnel. An observer table in the host records, per
(destination, port), the packets that reached input carrying both marks, and any that
still carry the tentative mark (none may: `confirm` decides every one). Connections
forwarded into pods are the network lab's subject (tests/netlab).
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
  set arrived4 { type ipv4_addr . inet_service; }
  counter tentative { }
  chain input { type filter hook input priority 10; policy accept;
    ct mark 0x00000f41 meta mark 0x6d6f6c65 tcp flags syn add @seen4 { ip daddr . tcp dport }
    ct mark 0x00000f41 meta mark 0x6d6f6c65 tcp flags syn add @seen6 { ip6 daddr . tcp dport }
    tcp flags syn add @arrived4 { ip daddr . tcp dport }
    ct mark 0x00000f43 counter name tentative
    meta mark 0x6d6f6c65 ct mark != 0x00000f41 counter name tentative
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


def seen(host: Netns, sets: tuple[str, ...] = ("seen4", "seen6")) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for family in sets:
        data = json.loads(host.nft_json(f"list set inet observe {family}"))
        for item in data["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                address, port = elem["concat"]
                out.add((address, port))
    return out


def tentative_left(host: Netns) -> int:
    data = json.loads(host.nft_json("list counter inet observe tentative"))
    return int(data["nftables"][1]["counter"]["packets"])


def test_only_host_ports_on_machine_addresses_get_both_marks(
    lab: tuple[Netns, Netns, Path],
) -> None:
    host, client, _ = lab
    probe(client, "192.168.50.2", 6443)  # API server: kubeadm's HOST_PORTS
    probe(client, "2001:db8:50::2", 6443)
    probe(client, "192.168.50.2", 22)  # an sshd: never
    probe(client, "192.168.50.2", 30080)  # a NodePort without DNAT behind it: never
    probe(client, "2001:db8:50::2", 443)  # not a host port
    probe(client, "192.168.50.2", 40000)
    assert seen(host) == {("192.168.50.2", 6443), ("2001:db8:50::2", 6443)}
    assert tentative_left(host) == 0


def test_tunnel_address_and_tunnel_interface_are_never_exempted(
    lab: tuple[Netns, Netns, Path],
) -> None:
    host, client, _ = lab
    # From the LAN to the tunnel's own address (the CVE-2019-14899 probe): not on eth0.
    client.sh("ip route add 10.99.0.2/32 dev lan0")
    probe(client, "10.99.0.2", 6443)
    # Arriving through the tunnel interface, even to the LAN address.
    client.sh(
        "ip route del 10.99.0.2/32 dev lan0 && ip route add 10.99.0.2/32 dev tun0 "
        "&& ip route replace 192.168.50.2/32 dev tun0 src 10.99.0.1"
    )
    probe(client, "10.99.0.2", 6443)
    probe(client, "192.168.50.2", 6443)
    # The SYNs did arrive (so "not marked" is a finding, not a lost packet) ...
    assert seen(host, ("arrived4",)) == {("10.99.0.2", 6443), ("192.168.50.2", 6443)}
    # ... and none of them carried the marks.
    assert seen(host) == set()
    assert tentative_left(host) == 0


def test_a_new_dhcp_address_needs_no_regeneration(lab: tuple[Netns, Netns, Path]) -> None:
    host, client, out = lab
    before = out.read_text()
    host.sh("ip addr flush dev eth0 scope global && ip addr add 192.168.50.77/24 dev eth0")
    probe(client, "192.168.50.77", 6443)
    assert seen(host) == {("192.168.50.77", 6443)}
    assert out.read_text() == before


def test_explicit_machine_addresses_and_host_ports_mark_only_those(
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
        "--host-ports",
        "9345,16443",
    )
    assert result.returncode == 0, result.stderr
    probe(client, "192.168.50.2", 9345)
    probe(client, "192.168.50.3", 9345)
    probe(client, "192.168.50.3", 6443)  # not in HOST_PORTS
    probe(client, "192.168.50.3", 16443)
    assert seen(host) == {("192.168.50.3", 9345), ("192.168.50.3", 16443)}
    assert tentative_left(host) == 0


def test_apply_refuses_cluster_ranges_overlapping_the_lan(
    lab: tuple[Netns, Netns, Path], tmp_path: Path
) -> None:
    host, _, out = lab
    before = out.read_text()
    table = host.sh("nft list table inet mullvad_allow_k8s").stdout
    result = host.cli(
        "apply", "--settings", "none", "--output", str(out), "--pod-cidrs", "192.168.0.0/16"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mullvad-allow-k8s: error: POD_CIDRS: '192.168.0.0/16': overlaps 192.168.50.0/24, "
        "the network of eth0, which is not a cluster interface: its devices would pass for "
        "cluster addresses (use the cluster's real ranges, or add the interface to "
        "CLUSTER_INTERFACES if it carries the cluster)"
    )
    assert out.read_text() == before
    assert host.sh("nft list table inet mullvad_allow_k8s").stdout == table
    gen = host.cli("generate", "--settings", "none", "--pod-cidrs", "192.168.0.0/16", "--check")
    assert gen.returncode == 0 and "warning: POD_CIDRS: '192.168.0.0/16': overlaps" in gen.stderr
    assert gen.stdout.startswith("# Generated by mullvad-allow-k8s")  # and prints the file
