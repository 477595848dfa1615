"""Run a scenario: build the lab, load the bypass under test, probe everything at once.

The ruleset under test is made by the project's own generator from a settings file
describing the lab, and loaded the way the packages load it (`mullvad-allow-k8s apply`
inside the machine's namespace). Set NETLAB_GENERATOR to a command (e.g. the installed
console script `mullvad-allow-k8s`) to test another build of it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .nsutil import LabError
from .probes import PROBES, Outcome, Probe, Scenario
from .topology import API_PORT, V4, V6, Lab

REPO = Path(__file__).resolve().parents[2]


def settings_text(lab: Lab, **overrides: str) -> str:
    """A settings file describing the lab's cluster, as a user would write it."""
    values = {
        "PRESET": "custom",
        "POD_CIDRS": f"{V4.cluster_pod_cidr} {V6.cluster_pod_cidr}",
        "SERVICE_CIDRS": f"{V4.svc_cidr} {V6.svc_cidr}",
        # Explicit: with PRESET=custom, auto would add whatever kind/k3d networks the
        # machine running the tests has (the kind lab passes auto itself).
        "NODE_NETWORKS": "none",
        "MACHINE_ADDRESSES": "auto",
        "HOST_PORTS": str(API_PORT),
        "TUNNEL_INTERFACE": mullvad_emu.TUNNEL,
        "OUTPUT": str(lab.tmp / "mullvad-allow-k8s.nft"),
        "BRIDGE_TABLE": "no",
    }
    values.update(overrides)
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def generator_command() -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment to run the generator with."""
    env = dict(os.environ)
    custom = env.get("NETLAB_GENERATOR")
    if custom:
        return shlex.split(custom), env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "mullvad_allow_k8s"], env


def run_generator(
    lab: Lab,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
    **overrides: str,
) -> subprocess.CompletedProcess[str]:
    """`mullvad-allow-k8s <args> --settings FILE` inside the machine's namespace, with
    `env` added to its environment (e.g. what a user's shell exports for kind), under
    `wrap` (tests.rootview: what root sees)."""
    path = lab.tmp / "settings"
    path.write_text(settings_text(lab, **overrides))
    argv, run_env = generator_command()
    run_env.update(env or {})
    return lab["host"].exec(*wrap, *argv, *args, "--settings", str(path), check=check, env=run_env)


def naive_ruleset() -> str:
    """A deliberately leaky bypass, to show the leak probes catch leaks.

    What a hurried user might write: exempt everything from pods, every inbound
    connection to any local address, all DNS the host sends, all host traffic to the
    private ranges the cluster lives in (the guide's #allow-ip with 10.0.0.0/8, issue
    #6243), and every host packet from a non-ephemeral source port ("server replies").
    """
    mark = f"ct mark set {mullvad_emu.CT_MARK} meta mark set {mullvad_emu.FWMARK}"
    return (
        "table inet netlab_naive {\n"
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority -150; policy accept;\n"
        f"\t\tip saddr {V4.pod_cidr} {mark}\n"
        f"\t\tip6 saddr {V6.pod_cidr} {mark}\n"
        f"\t\tct state new fib daddr type local {mark}\n"
        f"\t\tct mark {mullvad_emu.CT_MARK} meta mark set {mullvad_emu.FWMARK}\n"
        "\t}\n"
        "\tchain output {\n\t\ttype route hook output priority -160; policy accept;\n"
        f"\t\tmeta l4proto {{ tcp, udp }} th dport 53 {mark}\n"
        f"\t\tip daddr 10.0.0.0/8 {mark}\n"
        f"\t\tip6 daddr fc00::/7 {mark}\n"
        f"\t\ttcp sport != 32768-60999 {mark}\n"
        "\t}\n}\n"
    )


def load_bypass(lab: Lab, bypass: str, node_networks: str = "") -> str:
    """Load the bypass; return what the loader printed (kept for failure messages)."""
    if bypass == "none":
        return ""
    if bypass == "naive":
        lab["host"].nft(naive_ruleset())
        return "naive ruleset loaded"
    if bypass == "generated":
        nodes = {"NODE_NETWORKS": node_networks} if node_networks else {}
        proc = run_generator(lab, "apply", **nodes)
        return proc.stdout + proc.stderr
    raise ValueError(f"unknown bypass {bypass!r}")


@dataclass
class ScenarioResult:
    scenario: Scenario
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    snapshot: str = ""
    loader_output: str = ""
    seconds: float = 0.0


def run_probes(lab: Lab, probes: list[Probe]) -> dict[str, Outcome]:
    """All probes concurrently: the scenario costs about one client timeout."""
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = {p.id: pool.submit(p.run, lab) for p in probes}
        return {pid: fut.result() for pid, fut in futures.items()}


def run_scenario(scn: Scenario, probes: list[Probe] | None = None) -> ScenarioResult:
    """Fresh namespaces, bypass, state switch, probes, counters; always cleaned up."""
    start = time.monotonic()
    result = ScenarioResult(scn)
    first = MullvadState(scn.apply_in, scn.mullvad.allow_lan, scn.mullvad.split)
    lab = Lab(
        first if scn.bypass != "none" else scn.mullvad,
        rp_filter=scn.rp_filter,
        kube_proxy=scn.kube_proxy,
    )
    try:
        lab.build()
        result.loader_output = load_bypass(lab, scn.bypass, scn.node_networks)
        if lab.mullvad != scn.mullvad:
            lab.set_mullvad(scn.mullvad)
        result.outcomes = run_probes(lab, probes if probes is not None else PROBES)
        time.sleep(0.05)  # let the last in-flight packets reach the counters
        result.counters = lab.counters()
        result.snapshot = lab.snapshot()
    finally:
        errors = lab.destroy()
        if errors:
            raise LabError(f"cleanup of {lab.uid} failed: {errors}")
    result.seconds = time.monotonic() - start
    return result
