"""Mutation check of the generated table: is every rule decided by traffic? (root only)

Issue 22, item 2. The generated table for the lab's settings (tests/netlab/scenarios.py)
is cut down one rule at a time, and weakened by the match-level mutations listed in
WEAKENINGS; each mutant is loaded into the network-namespace lab in place of our table
and the lab's traffic probes (tests/netlab/probes.py, the ones test_matrix.py runs) are
run against it. A probe "kills" a mutant when its outcome differs from the one it has
with the unmutated table in the same lab: connected or not, which server answered,
the source address the server saw, which way the flow left the machine (the relay's
and the LAN's counters), how many spoofed packets arrived. A mutant no probe kills
"survives": the rule (or the match) is not decided by any traffic the lab makes.

Cheap mutants: the lab of a scenario is built once; each mutant replaces our table in
one nft transaction (the generated file's own `delete table` preamble), the counters
are reset, and only the probes of the family the rule can see run (a rule of a `_v4`
chain or with an `ip` match: IPv4 probes; likewise IPv6), all at once, so a mutant
costs about one probe timeout (1 s). Scenarios are tried in order (SCENARIOS) and a
mutant stops at the first that kills it; every kill is confirmed by running the
killing probes once more against the mutant (a probe that does not change again is
dropped as noise). Each scenario's unmutated outcomes are taken twice before the
mutants and once after them; probes whose outcome varies there are left out of the
comparison and printed.

Output: one row per mutant, with the scenario and probes that killed it, or SURVIVES.
Exit status 1 if any mutant survives, if a weakening no longer matches the generated
table (WEAKENINGS must follow the ruleset), or if the unmutated table fails a probe's
expectation (the lab is then not what the comparison assumes); 0 otherwise.

With --suites, each mutant the probes leave alive is then loaded into the netlab tests
that build labs of their own and judge traffic (SUITE_FILES: forged packets injected
into exempted flows, parked flows, reverse-path filters, the tunnel address appearing
and changing, a tunnel address inside a cluster range, br_netfilter off, the IPv6
guard, pod sources, exempted flows leaving by a cluster interface, the rule-count
baseline), through bench/mutant_cli.py as their generator: a test that fails with the
mutant and passes with our table kills it. About 25 s per mutant; not in CI. With
--killers FILE (CI: tests/netlab/test_mutation.py's KILLED_BY_TESTS), only the
survivors FILE names, each against only the tests named for it (a few seconds each).

The rules only a NODE_NETWORKS table has (this lab has no node network) are checked by
tests/netlab/test_multinode.py in its lab of Podman nodes, with this script's
machinery (node_mutants, NODE_WEAKENINGS, try_mutants); `make mutation` does not build
that lab: `pytest tests/netlab/test_multinode.py -s` prints its table.

    bench/mutation.py                 # every mutant (make mutation)
    bench/mutation.py --suites        # and the survivors against SUITE_FILES
    bench/mutation.py --killers FILE  # and named survivors against just their tests
    bench/mutation.py --only CHAIN    # the mutants of chains whose name starts so
    bench/mutation.py --json FILE     # the results, for tests
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netlab.mullvad_emu import MullvadState  # noqa: E402
from tests.netlab.nsutil import LabError, flush_conntrack  # noqa: E402
from tests.netlab.probes import PROBES, Outcome, Probe, Scenario, applies, check  # noqa: E402
from tests.netlab.scenarios import run_generator, run_probes  # noqa: E402
from tests.netlab.topology import SPOOF_RECEIVERS, Lab, watch_name  # noqa: E402

TABLE = "mullvad_allow_k8s"


# --- mutants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    chain: str
    index: int  # 1-based position among the chain's rules
    line: int  # line number in the generated text (0-based)
    text: str

    @property
    def family(self) -> int | None:
        """4 or 6 when the rule can only see one family's packets, else None."""
        return family_of(self.chain, self.text)


def family_of(chain: str, text: str) -> int | None:
    has4 = bool(chain.endswith("_v4") or re.search(r"\bip (saddr|daddr)\b|_v4\b|\bipv4\b", text))
    has6 = bool(chain.endswith("_v6") or re.search(r"\bip6 |_v6\b|\bipv6\b", text))
    if has4 != has6:
        return 4 if has4 else 6
    return None


@dataclass(frozen=True)
class Mutant:
    key: str  # stable name: "delete <chain>: <rule>" or "weaken: <name>"
    chain: str
    text: str  # the whole mutated file
    family: int | None  # probes of this family only (None: both)
    spec: dict[str, list[str]]  # how to make it from any generated file (apply_spec)


@dataclass(frozen=True)
class Weakening:
    """A match-level mutation: in the rules of chains matching `chains`, `pattern` is
    replaced by `replacement`. It must change at least one rule of the table."""

    name: str
    chains: str  # regex on the chain name
    pattern: str  # regex on the rule text
    replacement: str


# The weakenings the issue lists (issue 22's table; `follow`'s argv is not the table's).
# Its "output_guard without the entries for flows Mullvad's split tunnel already marked"
# is the table itself since those flows are no longer judged (probe excluded_ext_svc).
WEAKENINGS = [
    Weakening(
        "forward_guard_new: no test that the flow still goes to the cluster after DNAT",
        r"forward_guard_new_v[46]",
        r"^(ip6?) daddr @cluster_v[46] (oifname @cluster_interfaces return)$",
        r"\2",
    ),
    Weakening(
        "prerouting_new: the pod rule without its destination test (daddr @cluster)",
        r"prerouting_new_v[46]",
        r"^(iifname @cluster_interfaces ip6? saddr @pod_v[46]) ip6? daddr @cluster_v[46] ",
        r"\1 ",
    ),
    Weakening(
        "confirm_candidate: no 'not to a ClusterIP originally'",
        r"confirm_candidate",
        r"ct original ip6? daddr != @cluster_v[46] ",
        "",
    ),
    Weakening(
        "HOST_PORTS: fib daddr . iif -> fib daddr",
        r"confirm_candidate",
        r"^fib daddr \. iif type local (tcp dport @host_ports)",
        r"fib daddr type local \1",
    ),
]
# Set elements whose removal must be seen by traffic (issue 22: "lo").
ELEMENT_REMOVALS = [("cluster_interfaces", '"lo"')]

# The same-bridge test of NODE_NETWORKS tables (chain forward_node, issue 23), weakened:
# for tests/netlab/test_multinode.py (`node_mutants`), which has the bridges it needs; the
# lab of this script has no node network, so they are not in WEAKENINGS.
NODE_WEAKENINGS = [
    Weakening(
        "forward_node: leaves by any node bridge (a name match), not by the one it entered",
        r"forward_node",
        r"update @node_links \{ iif \. iif \} iif \. oif @node_links",
        "oifname @node_bridges",
    ),
    Weakening(
        "forward_node: learns every interface, not only node bridges",
        r"forward_node",
        r"^iifname @node_bridges (update @node_links)",
        r"\1",
    ),
]


CHAIN_RE = re.compile(r"^\tchain (\S+) \{$")


def rules_of(text: str) -> list[Rule]:
    """Every rule of the generated file (one per line inside a chain block)."""
    rules: list[Rule] = []
    chain: str | None = None
    count = 0
    for n, raw in enumerate(text.splitlines()):
        if m := CHAIN_RE.match(raw):
            chain, count = m.group(1), 0
            continue
        if chain is None:
            continue
        line = raw.strip()
        if raw == "\t}":
            chain = None
        elif line and not line.startswith(("#", "type ", "policy ")):
            count += 1
            rules.append(Rule(chain, count, n, line))
    return rules


def apply_spec(text: str, spec: dict[str, list[str]]) -> str:
    """The mutant `spec` names, made from a file generated with any settings (unchanged
    where the file has nothing it applies to):

    {"delete": [chain, rule]}: the rule deleted from the chain;
    {"weaken": [name]}: the WEAKENINGS entry of that name applied;
    {"element": [set, element]}: the element taken out of the set.
    """
    lines = text.splitlines(keepends=True)
    if "delete" in spec:
        chain, rule = spec["delete"]
        drop = {r.line for r in rules_of(text) if r.chain == chain and r.text == rule}
        return "".join(line for n, line in enumerate(lines) if n not in drop)
    if "weaken" in spec:
        (w,) = [w for w in WEAKENINGS + NODE_WEAKENINGS if w.name == spec["weaken"][0]]
        for r in rules_of(text):
            if re.fullmatch(w.chains, r.chain) and re.search(w.pattern, r.text):
                indent = lines[r.line][: len(lines[r.line]) - len(lines[r.line].lstrip())]
                lines[r.line] = indent + re.sub(w.pattern, w.replacement, r.text) + "\n"
        return "".join(lines)
    set_name, element = spec["element"]
    return _remove_element(text, set_name, element)[0]


def mutants(
    text: str,
    weakenings: Sequence[Weakening] = WEAKENINGS,
    removals: Sequence[tuple[str, str]] = ELEMENT_REMOVALS,
) -> tuple[list[Mutant], list[str]]:
    """All mutants of the generated text (every rule deleted, the weakenings and element
    removals given), and the weakenings and removals that matched nothing."""
    out: list[Mutant] = []
    rules = rules_of(text)

    def add(key: str, chain: str, family: int | None, spec: dict[str, list[str]]) -> None:
        out.append(Mutant(key, chain, apply_spec(text, spec), family, spec))

    for r in rules:
        add(
            f"delete {r.chain}[{r.index}]: {r.text}",
            r.chain,
            r.family,
            {"delete": [r.chain, r.text]},
        )
    stale: list[str] = []
    for w in weakenings:
        changed = [r for r in rules if re.fullmatch(w.chains, r.chain)]
        changed = [r for r in changed if re.search(w.pattern, r.text)]
        if not changed:
            stale.append(w.name)
            continue
        chains = ",".join(sorted({r.chain for r in changed}))
        fams = {r.family for r in changed}
        add(
            f"weaken: {w.name}",
            chains,
            fams.pop() if len(fams) == 1 else None,
            {"weaken": [w.name]},
        )
    for set_name, element in removals:
        if not _remove_element(text, set_name, element)[1]:
            stale.append(f"{set_name} without {element}")
            continue
        add(
            f"weaken: {set_name} without {element}",
            set_name,
            None,
            {"element": [set_name, element]},
        )
    for m in out:
        if m.text == text:
            raise ValueError(f"mutant {m.key!r} changes nothing")
    return out, stale


def node_mutants(
    table: str, reference: str, removals: Sequence[tuple[str, str]] = ()
) -> tuple[list[Mutant], list[str]]:
    """The mutants of a NODE_NETWORKS table (`table`) that the sweep of this script's lab
    (whose table is `reference`) does not make: each rule whose text no rule of
    `reference` has (in any chain: a rule moved to another chain is the same test)
    deleted, NODE_WEAKENINGS, and the element `removals`; and what of these matched
    nothing."""
    known = {r.text for r in rules_of(reference)}
    todo, stale = mutants(table, NODE_WEAKENINGS, removals)
    return [m for m in todo if m.spec.get("delete", ["", ""])[1] not in known], stale


def _remove_element(text: str, set_name: str, element: str) -> tuple[str, int]:
    start = text.find(f"\tset {set_name} {{")
    if start < 0:
        return text, 0
    end = text.find("\t}", start)
    block = text[start:end]
    new, n = re.subn(rf"{re.escape(element)}(, *|(?= *\}}))", "", block)
    return text[:start] + new + text[end:], n


# --- the lab ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabScenario:
    """A lab state in which mutants are tried: built once, mutants loaded in turn."""

    name: str
    mullvad: MullvadState
    applied_in: str = "connected"
    rp_filter: int = 2
    kube_proxy: str = "iptables"

    @property
    def scenario(self) -> Scenario:
        return Scenario(
            self.mullvad,
            "generated",
            rp_filter=self.rp_filter,
            apply_in=self.applied_in,
            kube_proxy=self.kube_proxy,
        )


# In order: a mutant stops at the first scenario that kills it. LAN sharing off first
# (the issue's setting: nothing of Mullvad's opens what our table must keep closed).
SCENARIOS = [
    LabScenario("connected, LAN sharing off", MullvadState("connected", False, True)),
    LabScenario("connected, LAN sharing on", MullvadState("connected", True, True)),
    LabScenario(
        "connected, LAN sharing off, kube-proxy nftables",
        MullvadState("connected", False, True),
        kube_proxy="nftables",
    ),
    LabScenario(
        "connected, LAN sharing off, strict rp_filter",
        MullvadState("connected", False, True),
        rp_filter=1,
    ),
    LabScenario(
        "blocked (applied connected), LAN sharing off",
        MullvadState("blocked", False, True),
    ),
]

Signature = tuple[object, ...]


@dataclass(frozen=True)
class Seen:
    sig: Signature
    outcome: Outcome


def signature(probe: Probe, got: Outcome, counters: dict[str, tuple[int, int]]) -> Signature:
    """What a probe showed, as far as a mutant can change it: success, who answered,
    the client address the server saw, and which ways the flow left the machine."""
    peer = (got.peer or "").removeprefix("::ffff:") or None
    path: tuple[bool, bool] | None = None
    if probe.watch:
        tun, lan = counters[watch_name(probe.watch, probe.fam)]
        path = (tun > 0, lan > 0)
    return (got.ok, got.ident, peer, path)


class MutationLab:
    def __init__(self, ls: LabScenario) -> None:
        self.ls = ls
        self.scn = ls.scenario
        first = MullvadState(ls.applied_in, ls.mullvad.allow_lan, ls.mullvad.split)
        self.lab = Lab(first, rp_filter=ls.rp_filter, kube_proxy=ls.kube_proxy)
        self.probes = [p for p in PROBES if applies(p, self.scn)]
        self.table = ""
        self.unexpected: list[str] = []

    def __enter__(self) -> MutationLab:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.lab.built())
            self.table = run_generator(self.lab, "generate").stdout
            self.load(self.table)
            if self.lab.mullvad != self.ls.mullvad:
                self.lab.set_mullvad(self.ls.mullvad)
            self._stack = stack.pop_all()  # the lab stays up until __exit__
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)  # Lab.built: a failed cleanup raises, or notes the error

    def load(self, text: str) -> None:
        self.lab["host"].nft(text)

    def _reset(self) -> None:
        # Every run from an empty conntrack table: a source port the kernel picks may be
        # one an earlier run's flow used, whose entry (marked by a mutant, or not) would
        # decide the new flow (tests/netlab/scenarios.Cells met it in CI).
        flush_conntrack(self.lab["host"])
        for role in ("vpn", "lan"):
            self.lab[role].exec("nft", "reset", "counters", "table", "inet", "netlab_counters")
        for role in SPOOF_RECEIVERS:
            self.lab[role].exec("nft", "reset", "counters", "table", "inet", "netlab_rx")

    def run(self, probes: Sequence[Probe], *, expect: bool = False) -> dict[str, Seen]:
        """Run the probes; with `expect`, also record where a result is not what
        test_matrix.py expects in this scenario (self.unexpected)."""
        self._reset()
        outcomes = run_probes(self.lab, list(probes))
        time.sleep(0.05)  # the last in-flight packets reach the counters
        counters = self.lab.counters()
        if expect:
            for p in probes:
                if problems := check(p, outcomes[p.id], counters, p.expect(self.scn)):
                    self.unexpected.append(f"{p.id}: {'; '.join(problems)}")
        return {p.id: Seen(signature(p, outcomes[p.id], counters), outcomes[p.id]) for p in probes}


@dataclass
class Result:
    key: str
    chain: str
    killed_in: str | None = None
    killers: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)  # changed once, not on the re-run
    suite_killers: list[str] = field(default_factory=list)  # --suites: tests that failed


def sweep(
    table: str,
    todo: list[Mutant],
    scenarios: Sequence[LabScenario] = SCENARIOS,
    log: Callable[[str], None] = print,
) -> tuple[list[Result], list[str]]:
    """Every mutant of `table` in the scenarios, in order; problems of the unmutated lab."""
    results = {m.key: Result(m.key, m.chain) for m in todo}
    problems: list[str] = []
    alive = list(todo)
    for ls in scenarios:
        if not alive:
            break
        start = time.monotonic()
        with MutationLab(ls) as ml:
            if _rules_and_sets(ml.table) != _rules_and_sets(table):
                raise LabError(f"{ls.name}: the generated table differs from the first lab's")
            base = ml.run(ml.probes, expect=True)
            twice = ml.run(ml.probes, expect=True)
            unstable = {pid for pid in base if base[pid].sig != twice[pid].sig}
            problems += [f"{ls.name}: unmutated table: {u}" for u in sorted(set(ml.unexpected))]
            stable = [p for p in ml.probes if p.id not in unstable]
            judged = try_mutants(table, alive, stable, base, load=ml.load, run=ml.run)
            survivors = []
            for m in alive:
                killers, noise = judged[m.key]
                results[m.key].noise += noise
                if killers:
                    results[m.key].killed_in = ls.name
                    results[m.key].killers = killers
                else:
                    survivors.append(m)
            ml.unexpected.clear()
            after = ml.run(ml.probes, expect=True)
            drift = {pid for pid in after if after[pid].sig != base[pid].sig} - unstable
            if unstable or drift or ml.unexpected:
                problems.append(
                    f"{ls.name}: unstable without mutation (left out): {sorted(unstable)}; "
                    f"changed after the mutants: {sorted(drift)}; unexpected: {ml.unexpected}"
                )
        log(
            f"{ls.name}: {len(alive)} mutants, {len(alive) - len(survivors)} killed, "
            f"{time.monotonic() - start:.0f} s"
        )
        alive = survivors
    return list(results.values()), problems


def try_mutants(
    table: str,
    todo: Sequence[Mutant],
    probes: Sequence[Probe],
    base: dict[str, Seen],
    *,
    load: Callable[[str], None],
    run: Callable[[Sequence[Probe]], dict[str, Seen]],
    pair_families: bool = False,
) -> dict[str, tuple[list[str], list[str]]]:
    """Each mutant of `table` loaded in place of it (`load`: one nft transaction) and
    the `probes` of the families it can see run (`run`: all at once); a probe kills it
    when what it shows differs from `base` (our table's) twice, on the run and on a
    re-run of the probes that changed. Returns, per mutant key, the killing probes
    (described: before -> with the mutant) and those that changed only once (noise).
    `table` is loaded again at the end.

    With `pair_families`, a mutant that only IPv4 packets can see and one that only
    IPv6 packets can see are loaded together (one table with both mutations), each
    judged by its family's probes: a rule no packet of a family matches changes nothing
    for that family's probes, deleted or weakened. Half the loads and probe timeouts."""
    trials: list[list[Mutant]] = [[m] for m in todo if not pair_families or m.family is None]
    if pair_families:
        v4 = [m for m in todo if m.family == 4]
        v6 = [m for m in todo if m.family == 6]
        trials += [[m for m in pair if m] for pair in zip_longest(v4, v6)]
    judged: dict[str, tuple[list[str], list[str]]] = {}
    try:
        for trial in trials:
            text = trial[0].text
            for m in trial[1:]:
                text = apply_spec(text, m.spec)
            chosen = {
                m.key: [p for p in probes if m.family is None or p.fam.v == m.family] for m in trial
            }
            load(text)
            got = run([p for ps in chosen.values() for p in ps])
            changed = [p for ps in chosen.values() for p in ps if got[p.id].sig != base[p.id].sig]
            again = run(changed) if changed else {}
            for m in trial:
                moved = [p.id for p in chosen[m.key] if got[p.id].sig != base[p.id].sig]
                confirmed = [pid for pid in moved if again[pid].sig != base[pid].sig]
                judged[m.key] = (
                    [_describe(pid, base[pid], got[pid]) for pid in confirmed],
                    [pid for pid in moved if pid not in confirmed],
                )
    finally:
        load(table)
    return judged


def _rules_and_sets(text: str) -> list[str]:
    """The file without the lab's path of it and the table comment (its fingerprint
    covers that path)."""
    return [
        line for line in text.splitlines() if not line.startswith(("\tcomment ", "#   OUTPUT="))
    ]


def _describe(pid: str, base: Seen, got: Seen) -> str:
    """`probe (before -> with the mutant)`, naming only what changed."""
    names = ("ok", "answered by", "client seen as", "left by")
    ways = {(False, False): "nowhere", (True, False): "tunnel", (False, True): "LAN"}

    def part(i: int, sig: Signature, outcome: Outcome) -> str:
        if i == 0:
            if "spoofed" in outcome.detail:
                return outcome.detail.split(" delivered")[0]
            return "ok" if outcome.ok else f"blocked ({outcome.detail})"
        if i == 3:
            path = sig[3]
            return f"left by {ways.get(path, 'tunnel and LAN')}"  # type: ignore[call-overload]
        return f"{names[i]} {sig[i]}"

    # A flow that no longer connects (or now does) says it all; else what changed.
    diff = [0] if base.sig[0] != got.sig[0] else [i for i in range(4) if base.sig[i] != got.sig[i]]
    before = ", ".join(part(i, base.sig, base.outcome) for i in diff)
    after = ", ".join(part(i, got.sig, got.outcome) for i in diff)
    return f"{pid} ({before} -> {after})"


def parallel_sweep(
    table: str, todo: list[Mutant], jobs: int, log: Callable[[str], None] = print
) -> tuple[list[Result], list[str]]:
    """sweep() on `jobs` interleaved parts of the mutants at once, each part in labs of
    its own: a mutant's cost is mostly waiting for probe timeouts, not CPU."""
    parts = [todo[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(sweep, table, part, SCENARIOS, log) for part in parts if part]
        done = [f.result() for f in futures]
    order = {m.key: n for n, m in enumerate(todo)}
    results = sorted((r for rs, _ in done for r in rs), key=lambda r: order[r.key])
    return results, [p for _, ps in done for p in ps]


# --suites: the netlab tests that load the generated table themselves, each with its
# own lab and settings, and check traffic (not rule text: test_generator_cli, which reads
# `status` and `doctor`, is left out; test_kind takes minutes of Podman).
SUITE_FILES = [
    "tests/netlab/test_flow_injection.py",
    "tests/netlab/test_parked_flows.py",
    "tests/netlab/test_rpfilter.py",
    "tests/netlab/test_tunnel_address.py",
    "tests/netlab/test_tunnel_in_cluster.py",
    "tests/netlab/test_br_netfilter_off.py",
    "tests/netlab/test_guard_v6.py",
    "tests/netlab/test_pod_source.py",
    "tests/netlab/test_exempted_flows_leave.py",
    "tests/netlab/test_rules_per_packet.py",
]


def run_suites(
    spec: dict[str, list[str]] | None,
    workdir: Path,
    targets: Sequence[str] = SUITE_FILES,
    xdist: bool = True,
) -> tuple[list[str], set[str]]:
    """The tests of `targets` (files or node ids; SUITE_FILES by default) that fail with
    the mutant of `spec` (None: our table) in place of our table, bench/mutant_cli.py as
    their generator; and the node ids of every test that ran (not skipped)."""
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / "junit.xml"
    env = {
        **os.environ,
        "NETLAB_GENERATOR": f"{sys.executable} {ROOT / 'bench' / 'mutant_cli.py'}",
        "MUTATION_SPEC": json.dumps(spec),
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-n", "2", "--dist", "loadgroup"] if xdist else ["-p", "no:xdist"]
    argv += [f"--junitxml={junit}", *targets]
    subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    failed: list[str] = []
    ran: set[str] = set()
    if not junit.exists():  # pytest refused the arguments (a node id that does not exist)
        return failed, ran
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/")
        node = f"{path}.py::{case.get('name')}"
        if case.find("skipped") is None:
            ran.add(node)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(node)
    return failed, ran


def suites_stage(
    survivors: list[Result], todo: list[Mutant], log: Callable[[str], None] = print
) -> list[str]:
    """Each survivor of the probes against SUITE_FILES; problems of the unmutated run."""
    specs = {m.key: m.spec for m in todo}
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        start = time.monotonic()
        base, _ = run_suites(None, Path(tmp) / "base")
        log(f"suites, our table: {len(base)} failed, {time.monotonic() - start:.0f} s")
        for n, r in enumerate(survivors):
            start = time.monotonic()
            failed, _ = run_suites(specs[r.key], Path(tmp) / str(n))
            r.suite_killers = [t for t in failed if t not in base]
            log(f"suites, {r.key}: {len(r.suite_killers)} failed, {time.monotonic() - start:.0f} s")
    return [f"with our table, suite test fails: {t}" for t in base]


def killers_stage(
    survivors: list[Result],
    todo: list[Mutant],
    killers: dict[str, list[str]],
    log: Callable[[str], None] = print,
) -> list[str]:
    """Each survivor of the probes that `killers` maps to netlab tests (pytest node ids:
    tests that build labs of their own) is loaded into just those tests; they must pass
    with our table (one run of them all) and a test that then fails with the mutant
    kills it. Two pytest runs at once (each builds labs, mostly waiting): the cheap,
    fixed form of --suites, for CI. Problems: a named test that fails with our table or
    did not run."""
    specs = {m.key: m.spec for m in todo}
    mine = [r for r in survivors if r.key in killers]
    named = sorted({t for r in mine for t in killers[r.key]})
    if not named:
        return []
    failed: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:

        def one(key: str | None, n: int) -> set[str]:
            began = time.monotonic()
            spec, targets = (specs[key], killers[key]) if key else (None, named)
            failed[key or ""], ran = run_suites(spec, Path(tmp) / str(n), targets, False)
            log(
                f"killer tests, {key or 'our table'}: {len(failed[key or ''])} of "
                f"{len(targets)} failed, {time.monotonic() - began:.0f} s"
            )
            return ran

        with ThreadPoolExecutor(max_workers=2) as pool:
            base = pool.submit(one, None, 0)
            runs = [pool.submit(one, r.key, n) for n, r in enumerate(mine, 1)]
            ran = base.result()
            for f in runs:
                f.result()
    for r in mine:
        r.suite_killers = [t for t in failed[r.key] if t not in failed[""]]
    problems = [f"with our table, killer test fails: {t}" for t in failed[""]]
    return problems + [f"killer test did not run: {t}" for t in named if t not in ran]


def report(results: Iterable[Result]) -> list[str]:
    survivors = []
    for r in results:
        if r.killed_in:
            print(f"killed    {r.key}\n          in {r.killed_in} by {', '.join(r.killers)}")
        elif r.suite_killers:
            print(f"killed    {r.key}\n          by tests {', '.join(r.suite_killers)}")
        else:
            survivors.append(r.key)
            print(f"SURVIVES  {r.key}")
        if r.noise:
            print(f"          (changed once, not on the re-run: {', '.join(sorted(set(r.noise)))})")
    return survivors


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="chains starting with this")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--jobs", type=int, default=2, help="labs at once (default 2)")
    ap.add_argument(
        "--suites",
        action="store_true",
        help="then run the netlab suites of SUITE_FILES against each survivor (~25 s each)",
    )
    ap.add_argument(
        "--killers",
        type=Path,
        help="JSON {mutant key: [pytest node ids]}: then run each survivor it names "
        "against just those tests (they must pass with our table, fail with the mutant)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mutation: needs root (network namespaces)", file=sys.stderr)
        return 2
    start = time.monotonic()
    # The table of the lab's settings: the same in every scenario's lab (generated in
    # each and compared), so the mutants are made once.
    with MutationLab(SCENARIOS[0]) as ml:
        table = ml.table
    todo, stale = mutants(table)
    if args.only:
        todo = [m for m in todo if any(m.chain.startswith(o) for o in args.only)]
    print(f"{len(todo)} mutants of the generated table ({len(rules_of(table))} rules)")
    results, problems = parallel_sweep(table, todo, args.jobs)
    if args.killers:
        killers = json.loads(args.killers.read_text())
        problems += killers_stage([r for r in results if not r.killed_in], todo, killers)
    if args.suites:
        alive = [r for r in results if not r.killed_in and not r.suite_killers]
        problems += suites_stage(alive, todo)
    survivors = report(results)
    seconds = time.monotonic() - start
    print(f"{len(results) - len(survivors)} of {len(results)} mutants killed; {seconds:.0f} s")
    for w in stale:
        problems.append(f"weakening no longer matches the generated table: {w}")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": [r.__dict__ for r in results],
                    "survivors": survivors,
                    "problems": problems,
                    "seconds": seconds,
                },
                indent=1,
            )
        )
    return 1 if survivors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
