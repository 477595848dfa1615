"""NODE_NETWORKS on the real kernel: exempted only on the node network's own bridge.

A host namespace with our table and two "node" namespaces behind veth pairs named like
Docker's bridges: br-0a1b2c3d4e5f (the kind network, 172.18.0.0/16) and
br-ffffffffffff (another Docker network, 172.19.0.0/16, not the cluster's), plus a LAN
client on eth0. Observer chains after ours record which first packets carry the ct mark
Mullvad's chains accept: in output (priority 10, where Mullvad's output filter would be),
in forward (10) and in postrouting (200, after every revocation). "Stale" settings bind
a range to the wrong bridge, as after a network was removed and its subnet reused:
nothing may be exempted then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Netns

pytestmark = pytest.mark.kernel

KIND_BRIDGE = "br-0a1b2c3d4e5f"
OTHER_BRIDGE = "br-ffffffffffff"
NODE = "172.18.0.2"
OTHER = "172.19.0.2"

OBSERVER = """
table inet observe {
  set seen_out { type ipv4_addr . inet_service; }
  set seen_post { type ipv4_addr . inet_service; }
  set seen_fwd { type ipv4_addr . inet_service; }
  set seen_input { type ipv4_addr . inet_service; }
  set seen_syn { type ipv4_addr . inet_service; }
  chain output { type filter hook output priority 10; policy accept;
    ct mark 0x00000f41 tcp flags syn add @seen_out { ip daddr . tcp dport }
  }
  chain forward { type filter hook forward priority 10; policy accept;
    ct mark 0x00000f41 tcp flags syn add @seen_fwd { ip daddr . tcp dport }
  }
  chain postrouting { type filter hook postrouting priority 200; policy accept;
    ct mark 0x00000f41 tcp flags syn add @seen_post { ip daddr . tcp dport }
    tcp flags syn add @seen_syn { ip daddr . tcp dport }
  }
  chain input { type filter hook input priority 10; policy accept;
    ct mark 0x00000f41 tcp flags syn add @seen_input { ip daddr . tcp dport }
    tcp flags syn add @seen_syn { ip daddr . tcp dport }
  }
}
"""

# Docker/Podman-style port publishing: 127.0.0.1:16443 -> the node's API server (in
# the output path) and :8080 on every address -> the node's :80 (prerouting).
PUBLISH = f"""
table ip publish {{
  chain output {{ type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.1 tcp dport 16443 dnat to {NODE}:6443
    ip daddr 127.0.0.1 tcp dport 16444 dnat to {OTHER}:6443
  }}
  chain prerouting {{ type nat hook prerouting priority -100; policy accept;
    iifname "eth0" tcp dport 8080 dnat to {NODE}:80
  }}
  chain postrouting {{ type nat hook postrouting priority 100; policy accept;
    ip saddr 127.0.0.0/8 masquerade
  }}
}}
"""

CONNECT = (
    "import socket,sys\n"
    "s=socket.socket()\n"
    "s.settimeout(0.5)\n"
    "try: s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "except OSError: pass\n"
)


class Lab:
    def __init__(self, make: Callable[[str], Netns]) -> None:
        self.host, self.node, self.other, self.lan = (
            make("host"),
            make("node"),
            make("other"),
            make("lan"),
        )
        for bridge, peer, host_ip, node_ip in (
            (KIND_BRIDGE, self.node, "172.18.0.1/16", f"{NODE}/16"),
            (OTHER_BRIDGE, self.other, "172.19.0.1/16", f"{OTHER}/16"),
            ("eth0", self.lan, "192.168.50.2/24", "192.168.50.1/24"),
        ):
            self.host.sh(f"ip link add {bridge} type veth peer name eth0 netns {peer.name}")
            self.host.sh(f"ip addr add {host_ip} dev {bridge} && ip link set {bridge} up")
            peer.sh(f"ip addr add {node_ip} dev eth0 && ip link set eth0 up")
        for peer, gateway in ((self.node, "172.18.0.1"), (self.other, "172.19.0.1")):
            peer.sh(f"ip route add default via {gateway}")
        self.lan.sh("ip route add default via 192.168.50.2")
        self.host.sh(
            "sysctl -qw net.ipv4.ip_forward=1 "
            f"net.ipv4.conf.{KIND_BRIDGE}.route_localnet=1 "
            f"net.ipv4.conf.{OTHER_BRIDGE}.route_localnet=1"
        )
        self.host.sh(f"nft -f - <<'EOF'\n{OBSERVER}\n{PUBLISH}\nEOF")

    def apply(self, node_networks: str, out: Path) -> None:
        result = self.host.cli(
            "apply",
            "--settings",
            "none",
            "--output",
            str(out),
            "--preset",
            "custom",
            "--pod-cidrs",
            "",
            "--service-cidrs",
            "",
            "--node-networks",
            node_networks,
        )
        assert result.returncode == 0, result.stderr

    def connect(self, where: Netns, address: str, port: int) -> None:
        where.sh(f'python3 -c "{CONNECT}" {address} {port}')

    def seen(self, name: str) -> set[tuple[str, int]]:
        data = json.loads(self.host.nft_json(f"list set inet observe seen_{name}"))
        return {
            (elem["concat"][0], elem["concat"][1])
            for item in data["nftables"]
            for elem in item.get("set", {}).get("elem", [])
        }


@pytest.fixture
def lab(netns_factory: Callable[[str], Netns]) -> Lab:
    return Lab(netns_factory)


def test_host_to_node_is_exempted_on_the_node_networks_bridge_only(
    lab: Lab, tmp_path: Path
) -> None:
    lab.apply(f"172.18.0.0/16@{KIND_BRIDGE}", tmp_path / "k.nft")
    lab.connect(lab.host, NODE, 6443)  # kubectl to the node
    lab.connect(lab.host, OTHER, 6443)  # another Docker network: not the cluster's
    lab.connect(lab.host, "192.168.50.1", 6443)  # the LAN
    assert lab.seen("syn") >= {(NODE, 6443), (OTHER, 6443), ("192.168.50.1", 6443)}
    assert lab.seen("out") == {(NODE, 6443)}
    assert lab.seen("post") == {(NODE, 6443)}


def test_a_range_bound_to_another_bridge_exempts_nothing(lab: Lab, tmp_path: Path) -> None:
    """Stale settings: the range is bound to a bridge it no longer lives on."""
    lab.apply(f"172.18.0.0/16@{OTHER_BRIDGE}", tmp_path / "k.nft")
    lab.connect(lab.host, NODE, 6443)
    lab.connect(lab.host, "127.0.0.1", 16443)  # the published port
    lab.connect(lab.lan, "192.168.50.2", 8080)
    assert lab.seen("syn") >= {(NODE, 6443), (NODE, 80)}
    assert lab.seen("out") == {(NODE, 6443)}  # only the DNAT-ed one, by address ...
    # ... revoked at postrouting, before any reply: the output hook cannot see the
    # interface DNAT re-routed to. Forwarded from the LAN: revoked in forward_guard.
    assert lab.seen("post") == set()
    assert lab.seen("fwd") == set()


def test_a_bridge_pattern_covers_any_docker_bridge(lab: Lab, tmp_path: Path) -> None:
    """The presets' fallback before the network exists: 172.18.0.0/16 on br-*."""
    lab.apply("172.18.0.0/16@br-*", tmp_path / "k.nft")
    lab.connect(lab.host, NODE, 6443)
    lab.connect(lab.host, OTHER, 6443)
    assert lab.seen("out") == {(NODE, 6443)}


def test_published_ports_of_the_node_are_exempted_through_dnat(lab: Lab, tmp_path: Path) -> None:
    lab.apply(f"172.18.0.0/16@{KIND_BRIDGE}", tmp_path / "k.nft")
    lab.connect(lab.host, "127.0.0.1", 16443)  # kubectl via the published API port
    lab.connect(lab.lan, "192.168.50.2", 8080)  # extraPortMappings from the LAN
    assert lab.seen("post") == {(NODE, 6443), (NODE, 80)}
    assert lab.seen("fwd") == {(NODE, 80)}


def test_the_nodes_own_connections_are_not_exempted(lab: Lab, tmp_path: Path) -> None:
    lab.apply(f"172.18.0.0/16@{KIND_BRIDGE}", tmp_path / "k.nft")
    lab.connect(lab.node, "172.18.0.1", 22)  # a host service (sshd)
    lab.connect(lab.node, "192.168.50.1", 443)  # forwarded: the LAN, the internet
    assert lab.seen("syn") >= {("172.18.0.1", 22), ("192.168.50.1", 443)}
    assert lab.seen("input") == set()
    assert lab.seen("fwd") == set()
    assert lab.seen("post") == set()


def test_a_clusterip_dnat_ed_to_a_node_is_not_exempted(lab: Lab, tmp_path: Path) -> None:
    """A Service of this machine's cluster with a node of a container cluster as its
    endpoint: the flow was meant for the cluster and, after DNAT, no longer goes there,
    so it stays under Mullvad's rules, as in forward_guard (routed out by the node's own
    bridge, so neither the address nor the interface gives it away)."""
    result = lab.host.cli(
        "apply", "--settings", "none", "--output", str(tmp_path / "k.nft"),
        "--preset", "custom", "--pod-cidrs", "10.244.0.0/16", "--service-cidrs", "10.96.0.0/12",
        "--node-networks", f"172.18.0.0/16@{KIND_BRIDGE}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lab.host.sh(
        f"ip route add 10.96.0.0/12 dev {KIND_BRIDGE} && nft add rule ip publish output "
        f"ip daddr 10.96.0.1 tcp dport 443 dnat to {NODE}:6444"
    )
    lab.connect(lab.host, "10.96.0.1", 443)
    lab.connect(lab.host, "127.0.0.1", 16443)  # the published port still is exempted
    assert (NODE, 6444) in lab.seen("syn")
    assert lab.seen("post") == {(NODE, 6443)}
