"""The tunnel's own address inside a cluster range stays under Mullvad's rules.

The realistic case: Mullvad gives the tunnel an address in 10.64.0.0/10 (the gateway
is 10.64.0.1), and kubeadm's service range 10.96.0.0/12 lies inside it, so the tunnel
may well be 10.99.x.y or, here, 10.96.200.2. `apply` adds the tunnel's current
addresses to the protected set, which every exemption checks first. Without that, a
pod's connection to the tunnel address would carry the ct mark, which Mullvad's input
chain accepts before its CVE-2019-14899 drop (with LAN sharing) or its policy drop: the
control loads the ruleset as this checkout generates it, without the tunnel element and
without input_guard's per-packet test of it, and shows the pod getting through, with
LAN sharing off and on. The same for the host's own connection to that address when a
Service has it as its ClusterIP (kube-proxy's output DNAT sends it to a pod, here one
DNAT rule of that shape): without the protection its reply from the pod, addressed to
the tunnel address, would pass Mullvad's input chain on the ct mark. The host's and the
pods' internet traffic, whose source is then a "cluster" address, still leaves only
through the tunnel. One lab, Mullvad connected, LAN sharing off and on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Outcome, Scenario, check, tcp_connect
from .scenarios import POOL_UNMARK, Cell, Cells, arm_tables, run_generator, weakened
from .topology import API_PORT, TUNNEL, V4, WEB_PORT, Lab

TUNNEL_IP = "10.96.200.2"  # inside SERVICE_CIDRS 10.96.0.0/12, like 10.99.x.y would be
MOVED = dataclasses.replace(TUNNEL, ips=(TUNNEL_IP, TUNNEL.ips[1]))
INTERNET = [PROBE_BY_ID["host_inet_v4"], PROBE_BY_ID["pod_inet_v4"]]

# A Service whose ClusterIP is the tunnel's address, DNAT-ed by kube-proxy in output
# (only this machine's connections meet it).
SERVICE_AT_TUNNEL = f"""table ip svc_at_tunnel {{
	chain output {{
		type nat hook output priority -100; policy accept;
		ip daddr {TUNNEL_IP} tcp dport {API_PORT} dnat to {V4.web_pod}:{WEB_PORT}
	}}
}}
"""


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    with Lab(MullvadState("connected", False, True)).built() as lab:
        # The new address first: removing a device's last IPv4 address would flush its
        # routes (the tunnel table's default route among them).
        lab["host"].ip(
            f"addr add {TUNNEL_IP}/32 dev {mullvad_emu.TUNNEL}\n"
            f"addr del {V4.tun_host}/32 dev {mullvad_emu.TUNNEL}\n"
        )
        lab["vpn"].ip(f"route add {TUNNEL_IP} dev tun0\n")
        lab.tunnel = MOVED
        lab.set_mullvad(lab.mullvad)  # Mullvad's table for the new address
        lab["host"].nft(SERVICE_AT_TUNNEL)
        # the control: the tunnel's address not added, nor checked per packet
        control = weakened(run_generator(lab, "generate", own=True).stdout, delete=[POOL_UNMARK])
        yield Cells(lab, arm_tables(lab, control=control))


def outcome(result: Outcome) -> str:
    return result.detail if result.ok else "blocked"


def run(cells: Cells, cell: Cell) -> tuple[str, str, dict[str, list[str]]]:
    """(pod -> tunnel address outcome, host -> that address as a ClusterIP outcome,
    internet probe problems), all at once."""
    lab = cells.lab
    cells.enter(cell)
    lab.reset_counters()
    to_tunnel = {role: partial(tcp_connect, TUNNEL_IP, API_PORT) for role in ("client", "host")}
    with ThreadPoolExecutor(len(to_tunnel) + len(INTERNET)) as pool:
        tunnel = {role: pool.submit(lab[role].call, fn) for role, fn in to_tunnel.items()}
        internet = {p.id: pool.submit(p.run, lab) for p in INTERNET}
        pod, host = outcome(tunnel["client"].result()), outcome(tunnel["host"].result())
        outcomes = {pid: fut.result() for pid, fut in internet.items()}
    lab.barrier(hops=4)
    counters = lab.counters()
    scenario = Scenario(cell.mullvad, "generated")
    problems = {p.id: check(p, outcomes[p.id], counters, p.expect(scenario)) for p in INTERNET}
    return pod, host, problems


@pytest.mark.parametrize("lan", [False, True], ids=["lan_off", "lan_on"])
def test_tunnel_address_in_a_cluster_range_is_protected(cells: Cells, lan: bool) -> None:
    pod, host, problems = run(cells, Cell("connected", lan, "generated"))
    assert pod == "blocked"
    assert host == "blocked"
    assert problems == {p.id: [] for p in INTERNET}
    doctor = run_generator(cells.lab, "doctor", check=False).stdout
    assert f"the tunnel address {TUNNEL_IP} lies inside the cluster ranges" in doctor


@pytest.mark.parametrize("lan", [False, True], ids=["lan_off", "lan_on"])
def test_without_the_tunnel_element_a_pod_reaches_the_tunnel_address(
    cells: Cells, lan: bool
) -> None:
    """The control: the lab sees what the protection prevents."""
    pod, host, _ = run(cells, Cell("connected", lan, "control"))
    assert pod.startswith("banner 'host "), pod
    assert host.startswith("banner 'web "), host
