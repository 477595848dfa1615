"""Fixtures of the network-namespace lab. Root only: skipped, saying why, otherwise."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator

import pytest

from . import kind
from .nsutil import NETNS_DIR, Netns, delete_namespaces, purge_stale
from .probes import Probe, Scenario, applies
from .scenarios import ScenarioResult, run_scenario
from .topology import PREFIX

HERE = os.path.dirname(__file__)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "netlab needs root (network namespaces, nftables); CI runs it as root"
    tools = ("ip", "nft", "iptables-restore", "ip6tables-restore")  # kube-proxy iptables mode
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return (
            f"netlab needs {', '.join(missing)} (.ci/run installs iproute2, nftables and iptables)"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "netlab: needs root; builds an emulated Mullvad + cluster in network namespaces"
    )
    if not config.pluginmanager.hasplugin("xdist"):  # we add the marker either way
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist loadgroup key")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Matrix cells where the probe says nothing (the tunnel's address once the tunnel is
    # gone) could only pass: they are not run at all.
    vacuous = [item for item in items if _vacuous(item)]
    if vacuous:
        config.hook.pytest_deselected(items=vacuous)
        items[:] = [item for item in items if item not in vacuous]
    reason = lab_unavailable()
    for item in items:
        if not str(item.path).startswith(HERE):
            continue
        item.add_marker(pytest.mark.netlab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        # With `-n N --dist loadgroup`, one worker builds each scenario once.
        callspec = getattr(item, "callspec", None)
        scn = callspec.params.get("scenario_result") if callspec else None
        group = scn.id if isinstance(scn, Scenario) else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))


def _vacuous(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    scenario, probe = callspec.params.get("scenario_result"), callspec.params.get("probe")
    return (
        isinstance(scenario, Scenario) and isinstance(probe, Probe) and not applies(probe, scenario)
    )


@pytest.fixture(scope="session", autouse=True)
def _namespace_hygiene() -> Iterator[None]:
    """Remove namespaces of killed earlier runs; at the end, report (and remove) any
    namespace of this run that a scenario failed to delete."""
    if lab_unavailable() is not None:
        yield
        return
    kind.purge_stale(PREFIX)  # before the namespaces: it uses their machine namespace
    purge_stale(PREFIX)
    yield
    ours = f"{PREFIX}{os.getpid()}-"
    left = sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(ours))
    if left:
        delete_namespaces([Netns(n) for n in left])
        warnings.warn(f"netlab left namespaces behind (now deleted): {left}", stacklevel=1)


@pytest.fixture(scope="module")
def scenario_result(request: pytest.FixtureRequest) -> Iterator[ScenarioResult]:
    """Build the scenario's namespaces, probe, clean up; tests read the results.

    Parametrized indirectly with a Scenario; the namespaces exist only while this
    fixture runs (they are deleted even if building or probing fails).
    """
    scn: Scenario = request.param
    yield run_scenario(scn)
