"""The tunnel's own address is protected per packet, with no reload (issue 21, finding 4).

The file exactly as `generate` writes it (no tunnel element: `apply` is what adds the
tunnel's current addresses, and the boot unit, `follow` and NixOS' loader do not run it
when the address changes) is loaded while the tunnel has no address. Then the tunnel
gets 10.64.0.2, then Mullvad moves it (key rotation, re-login) to 10.96.200.2, inside
SERVICE_CIDRS (kubeadm's 10.96.0.0/12 is a quarter of Mullvad's 10.64.0.0/10), and
rebuilds its table for it. At every step, with Mullvad connected and LAN sharing off:

* the LAN client's connection to a NodePort on the tunnel's address (kube-proxy's
  iptables mode opens NodePorts on every local address) gets nowhere, while the same
  NodePort on the machine's LAN address works (the lab could show it);
* a pod's connection to the machine's sshd on the tunnel's address gets nowhere, while
  the API server on the bridge address (a pod's way to the node) works.

Mullvad alone blocks both (LAN sharing off: nothing from the LAN is forwarded, nothing
from a pod delivered); so a connection on the tunnel's address could only be ours.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .probes import Outcome, tcp_connect
from .scenarios import run_generator
from .topology import API_PORT, HOST_SERVICE_PORT, NODEPORT, TUNNEL, V4, Lab

MOVED = "10.96.200.2"  # inside SERVICE_CIDRS 10.96.0.0/12
ROUTES = (
    f"route add {V4.tun_gw} dev {mullvad_emu.TUNNEL}\n"
    f"route add default dev {mullvad_emu.TUNNEL} table {mullvad_emu.TABLE_ID}\n"
)


def probe(lab: Lab, tunnel_ip: str) -> dict[str, str]:
    checks = {
        "lan_nodeport_tunnel": ("lanclient", tunnel_ip, NODEPORT),
        "lan_nodeport_lan": ("lanclient", V4.host_lan, NODEPORT),
        "pod_sshd_tunnel": ("client", tunnel_ip, HOST_SERVICE_PORT),
        "pod_api_bridge": ("client", V4.cni_gw, API_PORT),
    }

    def one(role: str, dst: str, port: int) -> Outcome:
        return lab[role].call(lambda: tcp_connect(dst, port))

    with ThreadPoolExecutor(len(checks)) as pool:
        futures = {name: pool.submit(one, *args) for name, args in checks.items()}
        return {
            name: (fut.result().detail if fut.result().ok else "blocked")
            for name, fut in futures.items()
        }


def steps() -> list[tuple[str, dict[str, str]]]:
    state = MullvadState("connected", False, True)
    lab = Lab(state)
    seen: list[tuple[str, dict[str, str]]] = []
    try:
        lab.build()
        host = lab["host"]
        # No tunnel address: its IPv4 routes go with it.
        host.ip(f"addr del {V4.tun_host}/32 dev {mullvad_emu.TUNNEL}\n")
        host.nft(run_generator(lab, "generate").stdout)
        # The tunnel gets its address, after the table was loaded.
        host.ip(f"addr add {V4.tun_host}/32 dev {mullvad_emu.TUNNEL}\n" + ROUTES)
        seen.append((V4.tun_host, probe(lab, V4.tun_host)))
        # Key rotation: a new address, Mullvad's table rebuilt for it; ours untouched.
        host.ip(
            f"addr add {MOVED}/32 dev {mullvad_emu.TUNNEL}\n"
            f"addr del {V4.tun_host}/32 dev {mullvad_emu.TUNNEL}\n"
        )
        host.ip(f"route replace {V4.tun_gw} dev {mullvad_emu.TUNNEL}\n")
        host.ip(f"route replace default dev {mullvad_emu.TUNNEL} table {mullvad_emu.TABLE_ID}\n")
        moved = dataclasses.replace(TUNNEL, ips=(MOVED, TUNNEL.ips[1]))
        host.nft(mullvad_emu.ruleset(state, moved))
        lab["vpn"].ip(f"route add {MOVED} dev tun0\n")
        lab["lanclient"].ip(f"route add {MOVED} via {V4.host_lan}\n")
        seen.append((MOVED, probe(lab, MOVED)))
    finally:
        lab.destroy()
    return seen


def test_tunnel_address_protected_from_the_moment_it_appears_and_after_it_changes() -> None:
    for address, got in steps():
        assert got["lan_nodeport_tunnel"] == "blocked", (address, got)
        assert got["pod_sshd_tunnel"] == "blocked", (address, got)
        # The same connections on the machine's other addresses work: the lab can tell.
        assert got["lan_nodeport_lan"].startswith("banner 'web "), (address, got)
        assert got["pod_api_bridge"].startswith("banner 'host "), (address, got)
