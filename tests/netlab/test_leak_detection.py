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
from .probes import PROBES, Probe, Scenario, applies, check
from .scenarios import ScenarioResult, run_scenario
from .test_matrix import FULL_MODE, MATRIX

# In the full matrix's kube-proxy mode (iptables): nftables mode's drop of unallocated
# ClusterIPs would hide a leak of the bypass to an unassigned service address.
# Blocked too (applied while connected, as a user would): the blocked state's
# expectations must be able to fail as well.
NAIVE = [
    Scenario(MullvadState(state, lan, True), "naive", kube_proxy=FULL_MODE)
    for state in ("connected", "blocked")
    for lan in (True, False)
]
# Every leak probe that expects the same outcome in every matrix scenario (the others
# expect success everywhere, by another way in some: test_matrix's can-fail check).
CONSTANT = [
    p
    for p in PROBES
    if "leak" in p.tags and len({p.expect(s).ok for s in MATRIX if applies(p, s)}) == 1
]


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
        if not applies(probe, as_correct):
            continue
        problems = check(
            probe, result.outcomes[probe.id], result.counters, probe.expect(as_correct)
        )
        if problems:
            caught.append(f"{result.scenario.id}: {'; '.join(problems)}")
    assert caught, f"{probe.id} did not notice the leaky bypass in any of {[s.id for s in NAIVE]}"


def test_the_leaky_bypass_is_caught_in_every_state(naive_results: list[ScenarioResult]) -> None:
    """Each naive scenario, blocked ones included, shows at least one leak."""
    quiet = []
    for result in naive_results:
        as_correct = replace(result.scenario, bypass="generated")
        caught = [
            p.id
            for p in CONSTANT
            if applies(p, as_correct)
            and check(p, result.outcomes[p.id], result.counters, p.expect(as_correct))
        ]
        if not caught:
            quiet.append(result.scenario.id)
    assert not quiet, f"no probe noticed the leaky bypass in {quiet}"
