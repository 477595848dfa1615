"""Reverse-path filters that run before DNAT pass exactly the connections we exempt.

NixOS' nftables firewall drops, at prerouting priority mangle + 10 (-140), every packet
whose source does not route back out of its interface with the packet's fwmark; its
iptables firewall does the same in mangle PREROUTING (-150) with `-m rpfilter
--validmark`. Both run before kube-proxy's DNAT (-100), so our decision after DNAT
(`confirm`, -99) comes too late for them: the tentative fwmark set at -151 is what lets
an off-link client's NodePort, hostPort, LoadBalancer and API server connections pass,
and it is cleared again for everything the cluster does not serve.

Each filter is modelled in nft as its source writes it: NixOS'
nixos/modules/services/networking/firewall-nftables.nix `rpfilter` chain (strict:
`fib saddr . mark . iif oif exists accept`, policy drop, the DHCPv4 accept), and the
iptables firewall's `-m rpfilter --validmark` as the same fib test at -150. The kernel's
own rp_filter is off here (0), so only these filters judge. One lab, Mullvad connected:

* our table, LAN sharing off: the served connections work, replies by the LAN; the host
  services stay unreachable;
* Mullvad alone with LAN sharing on, where Mullvad forwards an off-link client's NodePort,
  hostPort and LoadBalancer connections (private destinations after DNAT) and routes
  their answers into the tunnel: without a filter (the reference) the answers are
  counted in the tunnel; with either filter nothing is, anywhere: the filter dropped the
  connections (the source routes back into the tunnel, not the LAN) before Mullvad saw
  them. Mullvad alone with LAN sharing off would drop them itself and show no filter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Expect, Scenario, check
from .scenarios import Cell, Cells, arm_tables, run_probes
from .topology import Lab

FILTERS = {
    "nixos-nftables": (
        "table inet netlab_nixos_fw {\n"
        "\tchain rpfilter {\n"
        "\t\ttype filter hook prerouting priority -140; policy drop;\n"
        "\t\tmeta nfproto ipv4 udp sport . udp dport { 67 . 68, 68 . 67 } accept\n"
        "\t\tfib saddr . mark . iif oif exists accept\n"
        "\t}\n}\n"
    ),
    "iptables-mangle": (
        "table inet netlab_ipt_rpfilter {\n"
        "\tchain rpfilter {\n"
        "\t\ttype filter hook prerouting priority -150; policy accept;\n"
        "\t\tfib saddr . mark . iif oif missing drop\n"
        "\t}\n}\n"
    ),
}
# What an off-link client reaches (and what it must not), IPv4 and IPv6.
SERVED = ["remote_nodeport", "remote_hostport", "remote_lb", "remote_api"]
NOT_SERVED = ["remote_host_service", "remote_ephemeral"]
PROBES = [PROBE_BY_ID[f"{name}_v{v}"] for name in SERVED + NOT_SERVED for v in (4, 6)]
# Forwarded by Mullvad with LAN sharing on (a pod behind them); the API server and the
# host services are the machine's, where Mullvad's input chain takes private sources only.
FORWARDED = {"remote_nodeport", "remote_hostport", "remote_lb"}


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    with Lab(MullvadState("connected", False, True), rp_filter=0).built() as lab:
        yield Cells(lab, arm_tables(lab))


def run(cells: Cells, cell: Cell, filter_name: str | None) -> list[str]:
    """The probes' problems: what differs from the expectations (empty: all as told)."""
    lab = cells.lab
    cells.enter(cell)
    tables = "".join(
        f"table inet {name}\ndelete table inet {name}\n"
        for name in ("netlab_nixos_fw", "netlab_ipt_rpfilter")
    )
    lab["host"].nft(tables + (FILTERS[filter_name] if filter_name else ""))
    lab.reset_counters()
    outcomes = run_probes(lab, PROBES)
    lab.barrier(hops=4)  # an off-link client's last SYN to a pod, and the answer back
    counters = lab.counters()
    scenario = Scenario(cell.mullvad, cell.arm, rp_filter=0)
    problems = []
    for probe in PROBES:
        if cell.arm == "generated":
            want = probe.expect(scenario)
            # Without the bypass the filter (or Mullvad) stops them; with it they work.
            assert want.ok == (probe.name in SERVED)
        else:  # Mullvad alone with LAN sharing: its answer into the tunnel, or nothing
            forwarded = probe.name in FORWARDED and filter_name is None
            want = Expect(False, path="tunnel" if forwarded else "nowhere")
        problems += [f"{probe.id}: {p}" for p in check(probe, outcomes[probe.id], counters, want)]
    return problems


@pytest.mark.parametrize("filter_name", sorted(FILTERS))
def test_our_table_passes_the_served_connections_through_the_filter(
    cells: Cells, filter_name: str
) -> None:
    problems = run(cells, Cell("connected", False, "generated", rp_filter=0), filter_name)
    assert not problems, "\n".join(problems)


# The reference (no filter) last: its connections stay half-open in the pods, whose
# SYN-ACK retransmissions (into the tunnel, for a minute) a later cell would count.
@pytest.mark.parametrize("filter_name", [*sorted(FILTERS), None])
def test_without_our_table_the_filter_drops_what_mullvad_would_forward(
    cells: Cells, filter_name: str | None
) -> None:
    problems = run(cells, Cell("connected", True, "none", rp_filter=0), filter_name)
    assert not problems, "\n".join(problems)
