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
own rp_filter is off here (0), so only these filters judge.
"""

from __future__ import annotations

import time

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Expect, Scenario, check
from .scenarios import load_bypass, run_probes
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


def run(filter_name: str, bypass: str) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    lab = Lab(MullvadState("connected", False, True), rp_filter=0)
    try:
        lab.build()
        lab["host"].nft(FILTERS[filter_name])
        load_bypass(lab, bypass)
        outcomes = run_probes(lab, PROBES)
        time.sleep(0.05)
        return dict(outcomes), lab.counters()
    finally:
        lab.destroy()


@pytest.mark.parametrize("filter_name", sorted(FILTERS))
@pytest.mark.parametrize("bypass", ["none", "generated"])
def test_reverse_path_filter_before_dnat(filter_name: str, bypass: str) -> None:
    outcomes, counters = run(filter_name, bypass)
    scenario = Scenario(MullvadState("connected", False, True), bypass, rp_filter=0)
    problems = []
    for probe in PROBES:
        want = probe.expect(scenario)
        if probe.name in SERVED:
            # Without the bypass the filter (or Mullvad) stops them; with it they work.
            assert want.ok == (bypass == "generated")
        else:
            assert want == Expect(False, path="nowhere")
        got = outcomes[probe.id]
        problems += [f"{probe.id}: {p}" for p in check(probe, got, counters, want)]  # type: ignore[arg-type]
    assert not problems, "\n".join(problems)
