"""The tunnel's own address is protected per packet, with no reload (issue 21, finding 4).

The file exactly as `generate` writes it (no tunnel element: `apply` is what adds the
tunnel's current addresses, and the boot unit, `follow` and NixOS' loader do not run it
when the address changes) is loaded while the tunnel has no IPv4 address. Then the
tunnel gets 10.64.0.2, then Mullvad moves it (key rotation, re-login) to 10.96.200.2,
inside SERVICE_CIDRS (kubeadm's 10.96.0.0/12 is a quarter of Mullvad's 10.64.0.0/10),
and rebuilds its table for it. At both steps:

* the LAN client's connection to a NodePort on the tunnel's address (kube-proxy's
  iptables mode opens NodePorts on every local address), and the same NodePort on the
  machine's LAN address (the lab can tell a working NodePort);
* a pod's connection to the machine's sshd on the tunnel's address, and to the API
  server on the bridge address (a pod's way to the node).

The matrix, in one lab (scenarios.Cells): LAN sharing off and on, rp_filter 0 and 2,
three arms:

* "none", Mullvad alone: with LAN sharing off nothing reaches the tunnel's address
  (nothing from the LAN is forwarded, nothing from a pod delivered); with it on, its
  CVE-2019-14899 rule drops the pod's connection to the tunnel's address, while the LAN
  client's NodePort connections are forwarded as any to a private address, on the
  tunnel's address too, and answered on-link: the LAN client's probes say nothing about
  a table there (every arm connects), the pod's do; the pod reaches the API server
  only with LAN sharing on;
* "generated", the file: the same at the tunnel's address; the NodePort on the LAN
  address and the API server on the bridge address work;
* "control", the file without the two per-packet rules issue 21 added for this finding
  (prerouting_new's "a local address is reached only on the interface it is configured
  on", input_guard's "a pod loses the exemption to a local address in Mullvad's pool not
  on its arrival interface"): the pod reaches sshd on the tunnel's address at both
  steps, and (LAN sharing off) the LAN client the NodePort at 10.64.0.2. At
  10.96.200.2 (a ClusterIP to our table) the LAN's connection is also stopped by
  `confirm`'s "not to a ClusterIP originally", so only the pod shows the leak there.

Not run: Mullvad's Blocked state, where the tunnel and its address are gone (nothing to
reach); the tunnel's IPv6 address, which lies in the statically protected
fc00:bbbb:bbbb:bb01::/64 (nothing changes when it does). Connections are judged after
Lab.barrier instead of a client timeout.
"""

from __future__ import annotations

import dataclasses
import select
import socket
from collections.abc import Iterator
from functools import partial

import pytest

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .scenarios import POOL_UNMARK, Cell, Cells, run_generator, weakened
from .topology import API_PORT, HOST_SERVICE_PORT, NODEPORT, TUNNEL, V4, Lab

MOVED = "10.96.200.2"  # inside SERVICE_CIDRS 10.96.0.0/12
# The rules the control leaves out (issue 21, finding 4).
LOCAL_ON_ITS_INTERFACE = [
    f"fib daddr . iif type != local fib daddr type local {ip} daddr != @public_v{v} return"
    for ip, v in (("ip", 4), ("ip6", 6))
]
CHECKS = {
    "lan_nodeport_tunnel": ("lanclient", None, NODEPORT),
    "lan_nodeport_lan": ("lanclient", V4.host_lan, NODEPORT),
    "pod_sshd_tunnel": ("client", None, HOST_SERVICE_PORT),
    "pod_api_bridge": ("client", V4.cni_gw, API_PORT),
}


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    with Lab(MullvadState("connected", False, True)).built() as lab:
        ours = run_generator(lab, "generate", own=True).stdout
        control = weakened(ours, delete=[*LOCAL_ON_ITS_INTERFACE, POOL_UNMARK])
        generated = run_generator(lab, "generate").stdout
        yield Cells(lab, {"none": None, "generated": generated, "control": control})


def tunnel_address(lab: Lab, address: str | None) -> None:
    """The tunnel's IPv4 address becomes `address` (None: none), as Mullvad changes it;
    with one, its routes and Mullvad's table are made for it, and the relay and the LAN
    client route it (a LAN attacker aims at it)."""
    tun = mullvad_emu.TUNNEL
    out = lab["host"].exec("ip", "-4", "-o", "addr", "show", "dev", tun).stdout
    old = [line.split()[3].split("/")[0] for line in out.splitlines()]
    # The new address first: removing a device's last IPv4 address flushes its routes.
    lines = [f"addr add {address}/32 dev {tun}"] if address and address not in old else []
    lines += [f"addr del {a}/32 dev {tun}" for a in old if a != address]
    if address:
        lines += [
            f"route replace {V4.tun_gw} dev {tun}",
            f"route replace default dev {tun} table {mullvad_emu.TABLE_ID}",
        ]
    if lines:
        lab["host"].ip("\n".join(lines) + "\n")
    if address:
        lab["vpn"].ip(f"route replace {address} dev tun0\n")
        lab["lanclient"].ip(f"route replace {address} via {V4.host_lan}\n")
        lab.tunnel = dataclasses.replace(TUNNEL, ips=(address, TUNNEL.ips[1]))
        lab.set_mullvad(lab.mullvad)  # its table rebuilt for the address


def _connect(dst: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex((dst, port))  # the SYN
    return sock


def _outcome(sock: socket.socket) -> str:
    """ "blocked", or the banner of the server the connection reached."""
    _, writable, _ = select.select([], [sock], [], 0)
    if not writable or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        return "blocked"
    sock.settimeout(5.0)  # the server's banner follows its accept
    try:
        return f"banner {sock.makefile('r').readline().strip()!r}"
    except OSError as exc:
        return f"connected, then {exc!r}"


def probe(lab: Lab, tunnel_ip: str) -> dict[str, str]:
    socks = {
        name: lab[role].call(partial(_connect, dst or tunnel_ip, port))
        for name, (role, dst, port) in CHECKS.items()
    }
    try:
        # lanclient -> LAN router -> machine -> web pod, and its SYN-ACK all the way back
        lab.barrier(hops=6)
        return {name: _outcome(sock) for name, sock in socks.items()}
    finally:
        for sock in socks.values():
            sock.close()


def steps(cells: Cells, cell: Cell) -> list[tuple[str, dict[str, str]]]:
    lab = cells.lab
    tunnel_address(lab, None)
    cells.arm = None  # loaded anew, while the tunnel has no IPv4 address
    cells.enter(cell)
    seen = []
    for address in (V4.tun_host, MOVED):
        tunnel_address(lab, address)
        seen.append((address, probe(lab, address)))
    return seen


def expected(cell: Cell, address: str) -> dict[str, str]:
    """What each connection reaches, by the banner's server name ("blocked": nothing)."""
    ours = cell.arm != "none"
    leaky = cell.arm == "control"
    return {
        "lan_nodeport_tunnel": (
            "web" if cell.lan or (leaky and address == V4.tun_host) else "blocked"
        ),
        "lan_nodeport_lan": "web" if ours or cell.lan else "blocked",
        "pod_sshd_tunnel": "host" if leaky else "blocked",
        "pod_api_bridge": "host" if ours or cell.lan else "blocked",
    }


def _server(outcome: str) -> str:
    """The banner's server name, or the outcome as it is."""
    if outcome.startswith("banner '"):
        return outcome.removeprefix("banner '").split(" ", 1)[0]
    return outcome


@pytest.mark.parametrize(
    "cell",
    [
        Cell("connected", lan, arm, rp_filter)
        for lan in (False, True)
        for rp_filter in (0, 2)
        for arm in ("none", "generated", "control")
    ],
    ids=lambda c: c.id,
)
def test_tunnel_address_protected_from_the_moment_it_appears_and_after_it_changes(
    cells: Cells, cell: Cell
) -> None:
    for address, got in steps(cells, cell):
        seen = {name: _server(outcome) for name, outcome in got.items()}
        assert seen == expected(cell, address), (address, got)
