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

from . import agent, mullvad_emu
from .mullvad_emu import MullvadState
from .nsutil import LabError, flush_conntrack
from .probes import PROBES, Outcome, Probe, Scenario
from .topology import API_PORT, INBOUND, V4, V6, Lab

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
        "PUBLIC_ADDRESSES": " ".join(i.public for i in INBOUND.values()),
        "HOST_PORTS": str(API_PORT),
        "TUNNEL_INTERFACE": mullvad_emu.TUNNEL,
        "OUTPUT": str(lab.tmp / "mullvad-allow-k8s.nft"),
        "BRIDGE_TABLE": "no",
    }
    values.update(overrides)
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def generator_command(*, own: bool = False) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment to run the generator with: NETLAB_GENERATOR's, or
    (`own`, for the tests' controls) this checkout's."""
    env = dict(os.environ)
    custom = env.get("NETLAB_GENERATOR")
    if custom and not own:
        return shlex.split(custom), env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "mullvad_allow_k8s"], env


def run_generator(
    lab: Lab,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
    own: bool = False,
    **overrides: str,
) -> subprocess.CompletedProcess[str]:
    """`mullvad-allow-k8s <args> --settings FILE` inside the machine's namespace, with
    `env` added to its environment (e.g. what a user's shell exports for kind), under
    `wrap` (tests.rootview: what root sees); `own`: this checkout's, whatever
    NETLAB_GENERATOR says."""
    path = lab.tmp / "settings"
    path.write_text(settings_text(lab, **overrides))
    argv, run_env = generator_command(own=own)
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


# --- a matrix in one lab ---------------------------------------------------------------

# The tables an arm of a Cells matrix may load; each cell starts without any of them.
ARM_TABLES = ("inet mullvad_allow_k8s", "inet netlab_naive")
# Rules of our table the tests' controls leave out, as `generate` prints them (issue 21):
# postrouting_guard's drop of an exempted flow's packets leaving by a non-cluster
# interface; input_guard's and forward_guard's of those arriving on one; input_guard's
# unmarking of a pod's flow to a local address in Mullvad's tunnel pool.
LEAVING_DROP = "ct mark 0x00000f41 ct label 127 oifname != @cluster_interfaces drop"
ARRIVING_DROP = "ct mark 0x00000f41 ct label 127 iifname != @cluster_interfaces drop"
POOL_UNMARK = (
    "ct state new ct mark 0x00000f41 ip daddr 10.64.0.0/10 fib daddr . iif type != local "
    "ct mark set 0x00000000"
)


def weakened(text: str, *, delete: Sequence[str] = (), strip: Sequence[str] = ()) -> str:
    """A leaky control made of our table: the rules `delete` names (their whole text)
    taken out, and the matches in `strip` cut out of every rule that has them. Each
    must change the text, so a control cannot quietly become our table again."""
    lines = text.split("\n")
    for rule in delete:
        kept = [line for line in lines if line.strip() != rule]
        if len(kept) == len(lines):
            raise LabError(f"no rule {rule!r} in our table")
        lines = kept
    for match in strip:
        cut = [line.replace(f" {match} ", " ") for line in lines]
        if cut == lines:
            raise LabError(f"no match {match!r} in our table")
        lines = cut
    return "\n".join(lines)


def arm_tables(lab: Lab, **controls: str) -> dict[str, str | None]:
    """The arms of a matrix: "none" (Mullvad alone), "generated" (our table as `apply`
    loads it while Mullvad is connected, the tunnel's addresses included, as listed
    then) and the controls given (nft text)."""
    if lab.mullvad.state != "connected":
        raise LabError("our table is applied while Mullvad is connected")
    run_generator(lab, "apply")
    listed = lab["host"].exec("nft", "list", "table", *ARM_TABLES[0].split()).stdout
    return {"none": None, "generated": listed, **controls}


@dataclass(frozen=True)
class Cell:
    """One cell of a matrix: Mullvad's state and LAN sharing, the table (arm), the
    machine's rp_filter and br_netfilter."""

    state: str
    lan: bool
    arm: str
    rp_filter: int = 2
    br_nf: bool = True

    @property
    def mullvad(self) -> MullvadState:
        return MullvadState(self.state, self.lan, True)

    @property
    def id(self) -> str:
        parts = [self.mullvad.label, f"rp_filter{self.rp_filter}", self.arm]
        return "-".join(parts + ([] if self.br_nf else ["no_br_nf"]))


class Cells:
    """A module's matrix in one lab, each cell switched in place: Mullvad's state (to
    Blocked and back, as the app does), LAN sharing, rp_filter, br_netfilter, and the
    arm's table, replaced in one transaction. In a Blocked cell the generated arm is the
    table `apply` loaded while connected (arm_tables), so Blocked cells see our table as
    a machine whose tunnel went down sees it. Each cell starts with the machine's
    conntrack table empty, and probes use flows of their own (fresh source ports, or
    addresses numbered by `entered`), so conntrack entries and retransmissions of
    earlier cells are never theirs: a fresh port the kernel picks can be one an earlier
    cell's flow used, whose entry (marked by another arm, or not) would decide the new
    one's packets (seen once in CI: test_flow_injection's pod query in a `generated`
    cell not exempted, and the injection let in as with Mullvad alone)."""

    def __init__(self, lab: Lab, arms: Mapping[str, str | None]) -> None:
        self.lab = lab
        self.arms = dict(arms)
        self.arm: str | None = None
        self.entered = 0  # cells entered so far, this one included

    def enter(self, cell: Cell) -> None:
        lab = self.lab
        self.entered += 1
        if lab.mullvad != cell.mullvad:
            lab.set_mullvad(cell.mullvad)
        if lab.rp_filter != cell.rp_filter:
            lab.set_rp_filter(cell.rp_filter)
        if lab.br_nf != cell.br_nf:
            lab.set_br_nf(cell.br_nf)
        if self.arm != cell.arm:
            self.load(self.arms[cell.arm])
            self.arm = cell.arm
        flush_conntrack(lab["host"])

    def load(self, text: str | None) -> None:
        """Our table (or a control) in place of whichever arm was loaded."""
        gone = "".join(f"table {t}\ndelete table {t}\n" for t in ARM_TABLES)
        self.lab["host"].nft(gone + (text or ""))
        self.arm = None


def answered_locally(lab: Lab, role: str, server: str, port: int) -> None:
    """A query to the lab's DNS server (`server`:`port` in `role`'s namespace) from its
    own namespace, answered: the server has answered every query that reached it
    before (it serves a socket's queries in order). What a sleep stood for when a
    server's answers are counted (then Lab.barrier for their way out)."""
    qtype = agent.QTYPE_A if ":" not in server else agent.QTYPE_AAAA
    query = agent.build_query(4242, "marker.cluster.local", qtype)
    lab[role].call(lambda: agent.query_udp(server, port, query, 5.0))


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
        settled=scn.settled,
    )
    with lab.built():
        result.loader_output = load_bypass(lab, scn.bypass, scn.node_networks)
        if lab.mullvad != scn.mullvad:
            lab.set_mullvad(scn.mullvad)
        result.outcomes = run_probes(lab, probes if probes is not None else PROBES)
        # The last in-flight packets reach the counters: an off-link client's last SYN
        # to a pod, and the pod's answer back out
        lab.barrier(hops=4)
        result.counters = lab.counters()
        result.snapshot = lab.snapshot()
    result.seconds = time.monotonic() - start
    return result
