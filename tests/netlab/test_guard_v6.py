"""The forward guard keeps IPv6 pod flows to cluster addresses with nothing behind them off
the LAN, as it does for IPv4.

In the matrix's first-minute scenarios the IPv6 cells of these probes cannot fail: with
Mullvad's LAN sharing off an IPv6 pod cannot even resolve its gateway yet (it solicits
from its ULA address, which Mullvad's input chain drops; its kernel's router probe comes
after a minute), and with it on Mullvad itself forwards private destinations to the LAN.
The matrix's settled scenarios (pods that know their gateway) test them too; this
module's own counter shows the pod's packets reached the guard. A pod can still send for
a while after the host solicited it first (the host's neighbour solicitation carries its
link-layer address): here the host pings the pod, then the pod connects. Blocked state,
LAN sharing off, the bypass applied while connected: the tunnel is gone, so the main
table's default route is the LAN, and only the guard's interface test keeps the flow off
it. The same lab without that rule and `postrouting_guard`'s drop (which would stop the
flow's packets too: it was exempted with ct label 127) is the control: the flow reaches
the LAN. In both arms a counter in the host's forward hook, before the guard, shows the
pod's packets got there: a zero on the LAN is the guard's doing, not a pod that could
not send.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, tcp_connect
from .scenarios import LEAVING_DROP, run_generator
from .topology import V6, WATCHES, Lab, watch_name

GUARD = "oifname != @cluster_interfaces ct mark set 0x00000000"
PROBES = [PROBE_BY_ID["pod_other_node_v6"], PROBE_BY_ID["pod_unassigned_svc_v6"]]


# The pod's packets of each probe, counted in the host's forward hook before the guard
# (forward_guard's priority is -10).
ARRIVED = (
    "table inet netlab_arrived {\n"
    + "".join(f"\tcounter {p.watch} {{ }}\n" for p in PROBES)
    + "\tchain seen {\n\t\ttype filter hook forward priority -20; policy accept;\n"
    + "".join(
        f"\t\tip6 saddr {V6.client_pod} "
        + WATCHES[p.watch or ""].format(ip="ip6", **dataclasses.asdict(V6))
        + f' counter name "{p.watch}"\n'
        for p in PROBES
    )
    + "\t}\n}\n"
)


def arrived(lab: Lab) -> dict[str, int]:
    out = lab["host"].exec("nft", "-j", "list", "counters", "table", "inet", "netlab_arrived")
    counters = [i["counter"] for i in json.loads(out.stdout)["nftables"] if "counter" in i]
    by_watch = {c["name"]: int(c["packets"]) for c in counters}
    return {p.id: by_watch[p.watch or ""] for p in PROBES}


def lan_packets(without_guard: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(packets of each probe that reached the host's forward hook, that left by the LAN)"""
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        if without_guard:
            text = run_generator(lab, "generate").stdout
            for rule in (GUARD, LEAVING_DROP):
                assert f"\t\t{rule}\n" in text
                text = text.replace(f"\t\t{rule}\n", "")
            lab["host"].nft(text)
        else:
            run_generator(lab, "apply")
        lab.set_mullvad(MullvadState("blocked", False, True))
        lab["host"].nft(ARRIVED)
        # The host solicits the pod (host -> cluster is exempted; a connection to a
        # closed port is enough): the pod learns the gateway's link-layer address.
        lab["host"].call(lambda: tcp_connect(V6.client_pod, 9))
        for probe in PROBES:
            probe.run(lab)
        lab.barrier()  # pod -> machine -> LAN router
        counters = lab.counters()
        lan = {p.id: counters[watch_name(p.watch or "", V6)][1] for p in PROBES}
        return arrived(lab), lan
    finally:
        lab.destroy()


def test_ipv6_pod_flows_to_empty_cluster_addresses_stay_off_the_lan() -> None:
    sent, lan = lan_packets(without_guard=False)
    assert all(count > 0 for count in sent.values()), f"the pod's packets never came: {sent}"
    assert lan == {p.id: 0 for p in PROBES}


def test_without_the_guards_interface_rule_they_reach_the_lan() -> None:
    """The control: the lab can see the leak the guard prevents."""
    sent, leaked = lan_packets(without_guard=True)
    assert all(count > 0 for count in sent.values()), f"the pod's packets never came: {sent}"
    assert all(count > 0 for count in leaked.values()), leaked


pytestmark = pytest.mark.xdist_group("guard_v6")
