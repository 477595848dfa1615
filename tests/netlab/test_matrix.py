"""The scenario matrix: every probe in every Mullvad state, with and without the bypass.

Each scenario builds fresh namespaces once and runs all probes concurrently (see
conftest.scenario_result); each test then checks one probe's result against what
that scenario must show. The same probe runs without the bypass and must fail there
wherever it passes with it, which is what shows the tests can fail.

kube-proxy runs in one mode (FULL_MODE) in every scenario and in the other mode in a
representative part of them (OTHER); MATRIX is both.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from .mullvad_emu import MullvadState
from .probes import PROBES, Probe, Scenario, applies, check
from .scenarios import ScenarioResult

# kube-proxy's mode of the full matrix: iptables, kube-proxy's default (kubeadm, kind,
# k3s, minikube), the one that shares `ip nat` with the CNI portmap plugin's chains,
# and the one without the drop of unallocated ClusterIPs, so the unassigned-service
# leak probes test the bypass itself rather than kube-proxy.
FULL_MODE = "iptables"
OTHER_MODE = "nftables"


NODES = "172.18.0.0/16@br-* 10.89.0.0/24@cni-podman* fc00:f853:ccd:e793::/64@br-*"


def _s(state: str, lan: bool, bypass: str, **kw: object) -> Scenario:
    split = bool(kw.pop("split", True))
    st = MullvadState(state, lan, split)
    return Scenario(st, bypass, kube_proxy=FULL_MODE, **kw)  # type: ignore[arg-type]


FULL: list[Scenario] = [
    _s("connected", False, "none"),
    _s("connected", False, "generated"),
    _s("connected", True, "none"),
    _s("connected", True, "generated"),
    # Blocked (error state / lockdown): the bypass applied while connected stays in
    # force after the app swaps its table, removes its routing rules and the tunnel...
    _s("blocked", False, "none"),
    _s("blocked", False, "generated"),
    _s("blocked", True, "none"),
    # ... and applying it while blocked (no tunnel interface at all) works too.
    _s("blocked", True, "generated", apply_in="blocked"),
    # Split tunnelling unavailable: Mullvad has no ct-mark accept rules.
    _s("connected", True, "none", split=False),
    _s("connected", True, "generated", split=False),
    _s("connected", False, "generated", split=False),
    # Strict reverse-path filtering (src_valid_mark=1 as Mullvad sets it).
    _s("connected", False, "none", rp_filter=1),
    _s("connected", False, "generated", rp_filter=1),
    # Node networks set (kind's and Podman's defaults, on bridge patterns) change
    # nothing for any probe: host services, spoofed sources, the tunnel side, leaks.
    _s("connected", False, "generated", node_networks=NODES),
    _s("connected", True, "generated", node_networks=NODES),
    _s("blocked", False, "generated", node_networks=NODES),
    # Pods more than a minute old: their IPv6 gateway known (their kernel's router probe),
    # so with LAN sharing off their IPv6 meets the table, not a neighbour-discovery wall.
    _s("connected", False, "none", settled=True),
    _s("connected", False, "generated", settled=True),
    _s("blocked", False, "none", settled=True),
    _s("blocked", False, "generated", settled=True),
]
# The other mode on a representative part: both bypass states with allow LAN off,
# allow LAN on (also Mullvad alone: what a user expects of externalTrafficPolicy Local,
# the client's own address at the pod), the blocked state, strict reverse-path filtering.
OTHER_IDS = {
    "connected-lan_off-generated",
    "connected-lan_off-none",
    "connected-lan_on-generated",
    "connected-lan_on-none",
    "blocked-lan_off-generated-applied_connected",
    "connected-lan_off-generated-rp_filter1",
}


def _without_mode(s: Scenario) -> str:
    return s.id.removesuffix(f"-kp_{s.kube_proxy}")


OTHER = [replace(s, kube_proxy=OTHER_MODE) for s in FULL if _without_mode(s) in OTHER_IDS]
assert len(OTHER) == len(OTHER_IDS), "OTHER_IDS names a scenario FULL does not have"
MATRIX: list[Scenario] = FULL + OTHER


def describe(probe: Probe, result: ScenarioResult) -> str:
    """Context for a failure: what the probe is for, what it saw, and the host's state."""
    counters = {k: v for k, v in result.counters.items() if v != (0, 0)}
    return (
        f"\n{probe.id}: {probe.why}\nscenario {result.scenario.id}\n"
        f"nonzero counters (tunnel, lan): {counters}\nloader: {result.loader_output.strip()}\n"
        f"--- host snapshot ---\n{result.snapshot}"
    )


# Every probe in every scenario; conftest deselects the cells where a probe can say
# nothing (probes.applies), so no cell that could only pass is run.
@pytest.mark.parametrize("scenario_result", MATRIX, ids=lambda s: s.id, indirect=True)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(scenario_result: ScenarioResult, probe: Probe) -> None:
    want = probe.expect(scenario_result.scenario)
    got = scenario_result.outcomes[probe.id]
    problems = check(probe, got, scenario_result.counters, want)
    assert not problems, "; ".join(problems) + describe(probe, scenario_result)


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe_expectation_can_fail(probe: Probe) -> None:
    """A probe must expect success somewhere and failure elsewhere, or be a leak probe
    that test_leak_probes_catch_a_leaky_bypass shows failing on a leaky bypass, or
    expect success everywhere but from another server or by another way in some
    scenarios (a process Mullvad's split tunnel excludes: by the LAN, or through the
    tunnel where split tunnelling is unavailable), which a lab that blocks it fails."""
    expected = {probe.expect(s) for s in MATRIX if applies(probe, s)}
    outcomes = {e.ok for e in expected}
    differs = outcomes == {True} and len({(e.ident, e.path) for e in expected}) > 1
    assert outcomes == {True, False} or "leak" in probe.tags or differs, (
        f"{probe.id} expects {outcomes} in every scenario and is not a leak probe"
    )
