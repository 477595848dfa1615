"""The forward guard keeps IPv6 pod flows to cluster addresses with nothing behind them off
the LAN, as it does for IPv4.

In the matrix the IPv6 cells of these probes cannot fail: with Mullvad's LAN sharing off
an IPv6 pod cannot even resolve its gateway (it solicits from its ULA address, which
Mullvad's input chain drops), and with it on Mullvad itself forwards private
destinations to the LAN. A pod can still send for a while after the host solicited it
first (the host's neighbour solicitation carries its link-layer address): here the host
pings the pod, then the pod connects. Blocked state, LAN sharing off, the bypass applied
while connected: the tunnel is gone, so the main table's default route is the LAN, and
only the guard's interface test keeps the flow off it. The same lab without that rule
and `postrouting_guard`'s drop (which would stop the flow's packets too: it was exempted
with ct label 127) is the control: the flow reaches the LAN.
"""

from __future__ import annotations

import time

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, tcp_connect
from .scenarios import run_generator
from .topology import V6, Lab, watch_name

GUARD = "oifname != @cluster_interfaces ct mark set 0x00000000"
LEAVING = "ct mark 0x00000f41 ct label 127 oifname != @cluster_interfaces drop"
PROBES = [PROBE_BY_ID["pod_other_node_v6"], PROBE_BY_ID["pod_unassigned_svc_v6"]]


def lan_packets(without_guard: bool) -> dict[str, int]:
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        if without_guard:
            text = run_generator(lab, "generate").stdout
            for rule in (GUARD, LEAVING):
                assert f"\t\t{rule}\n" in text
                text = text.replace(f"\t\t{rule}\n", "")
            lab["host"].nft(text)
        else:
            run_generator(lab, "apply")
        lab.set_mullvad(MullvadState("blocked", False, True))
        # The host solicits the pod (host -> cluster is exempted; a connection to a
        # closed port is enough): the pod learns the gateway's link-layer address.
        lab["host"].call(lambda: tcp_connect(V6.client_pod, 9))
        for probe in PROBES:
            probe.run(lab)
        time.sleep(0.05)
        counters = lab.counters()
        return {p.id: counters[watch_name(p.watch or "", V6)][1] for p in PROBES}
    finally:
        lab.destroy()


def test_ipv6_pod_flows_to_empty_cluster_addresses_stay_off_the_lan() -> None:
    assert lan_packets(without_guard=False) == {p.id: 0 for p in PROBES}


def test_without_the_guards_interface_rule_they_reach_the_lan() -> None:
    """The control: the lab can see the leak the guard prevents."""
    leaked = lan_packets(without_guard=True)
    assert all(count > 0 for count in leaked.values()), leaked


pytestmark = pytest.mark.xdist_group("guard_v6")
