"""The leak probes are not vacuous: on a deliberately leaky bypass they report leaks.

Probes whose expectation is "blocked" in every scenario of the matrix (DNS to outside
resolvers, the tunnel's own address, ephemeral ports) would pass against a lab that
blocks everything. Here the same checks, with the expectations of a correct bypass,
run against `scenarios.naive_ruleset()` and must fail.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBES, Probe, Scenario, check
from .scenarios import ScenarioResult, run_scenario
from .test_matrix import FULL_MODE, MATRIX

# In the full matrix's kube-proxy mode (iptables): nftables mode's drop of unallocated
# ClusterIPs would hide a leak of the bypass to an unassigned service address.
NAIVE = [
    Scenario(MullvadState("connected", True, True), "naive", kube_proxy=FULL_MODE),
    Scenario(MullvadState("connected", False, True), "naive", kube_proxy=FULL_MODE),
]
# Every probe that expects the same outcome in every matrix scenario.
CONSTANT = [p for p in PROBES if len({p.expect(s).ok for s in MATRIX}) == 1]


@pytest.fixture(scope="module")
def naive_results() -> list[ScenarioResult]:
    return [run_scenario(s, CONSTANT) for s in NAIVE]


@pytest.mark.parametrize("probe", CONSTANT, ids=lambda p: p.id)
def test_leak_probes_catch_a_leaky_bypass(
    naive_results: list[ScenarioResult], probe: Probe
) -> None:
    caught = []
    for result in naive_results:
        # Judge the leaky bypass as if it were a correct one ("generated").
        as_correct = replace(result.scenario, bypass="generated")
        problems = check(
            probe, result.outcomes[probe.id], result.counters, probe.expect(as_correct)
        )
        if problems:
            caught.append(f"{result.scenario.id}: {'; '.join(problems)}")
    assert caught, f"{probe.id} did not notice the leaky bypass in any of {[s.id for s in NAIVE]}"
