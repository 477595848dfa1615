"""Data-path cost of the bypass, measured in the network-namespace lab (root only).

Pod -> ClusterIP service, with Mullvad's emulated firewall alone ("base") and with
Mullvad's firewall plus the table `mullvad-allow-k8s apply` loads ("bypass"):

* TCP throughput: iperf3 (Debian's) from the client pod to the web service's
  ClusterIP, DNAT-ed to the web pod. Goal: bypass / base >= 0.97.
* UDP DNS round trip: one query per fresh socket (a new conntrack entry each time,
  as resolvers do), p50. Goal: bypass p50 within 5% of base p50.
* New-flow rate: distinct UDP flows per second, client pod -> the DNS service's
  ClusterIP on port 5300, each query from its own socket bound to its own source port,
  so each is its own conntrack entry as DNS queries are: DNAT, and the first packet
  meets our prerouting, confirm, forward_guard, postrouting_guard and nat_park chains
  in full (10 of our rules, see bench/rules_per_packet.py, against 6 for its reply,
  which meets no nat chain), plus Mullvad's chains. Goal: bypass / base >= 0.95. A throughput of new
  flows, not one query's latency, which at tens of microseconds is mostly scheduling
  on a small VM.

Why the DNS figures use port 5300: without the bypass, Mullvad's forward chain
rejects every pod's port-53 packet (`udp dport 53 reject`, notes §1.6), so there is
no port-53 baseline to compare with. Both variants therefore run the same DNS
exchange against the same CoreDNS stand-in behind the same service IP on port 5300,
which Mullvad does not single out: same DNAT, bridge, br_netfilter and conntrack
path, and the only difference is our table (plus what it causes in Mullvad's own
rules: the ct-mark accept and masquerade). Allow LAN is on in both variants, since
that is what lets cluster traffic through Mullvad at all without the bypass. The
port-53 p50 with the bypass is printed too, to show the real path costs the same.

Throughput and round trip: variants are interleaved round by round (ABBA order) and
each ratio is the median of the per-round ratios, so drift and other load on the
machine hit both alike.

New-flow rate, built against the machine's other load (other jobs share its CPUs):
two identical labs, our table loaded in one of them (which one swaps every round,
ABBA); within a round, bursts of flows alternate between the two labs (ABBA) a few
milliseconds apart, each pair of bursts gives a ratio, the round's ratio is the median
of its pairs, and the figure is the median of the rounds' ratios with their
interquartile range and min-max. The conntrack tables are flushed before each round
and a round gives every flow a source port of its own, so every flow is new. The
client, both labs' DNS responders and so the packets' softirq work all run on one
CPU (the last this process may use): with the two labs' processes left to the
scheduler, which CPU each lands on changed from round to round and moved a round's
ratio by +-4% (interquartile range of the A/A control); pinned, +-1.5%. An A/A
control (no table in either lab), printed with `--flow-control`, shows the method's
own bias and spread on this machine. `--flow-ablation` says where the cost lies: the
same figure for tables cut down from ours (they do not work as a bypass; diagnostics
only): our base chains with no rule at all, our base chains with every regular chain
emptied (the dispatch alone), and ours without `forward_guard`.

The lab's namespaces are created once and deleted at exit. Prints figures, asserts
nothing; exit status 0 unless the lab cannot be built.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netlab import agent  # noqa: E402
from tests.netlab.mullvad_emu import MullvadState  # noqa: E402
from tests.netlab.nsutil import AGENT, LabError, Netns, flush_conntrack  # noqa: E402
from tests.netlab.scenarios import run_generator  # noqa: E402
from tests.netlab.topology import DNS_ALT_PORT, IPERF_PORT, V4, Lab  # noqa: E402


def wait_listening(ns: Netns, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in ns.exec("ss", "-Htln").stdout:
            return
        time.sleep(0.05)
    raise LabError(f"nothing listens on {port} in {ns.name}")


def iperf(lab: Lab, seconds: float) -> float:
    """One iperf3 TCP run client pod -> web service; received Gbit/s."""
    proc = lab["client"].exec(
        "iperf3", "-c", V4.web_svc, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
        "--connect-timeout", "2000",
    )  # fmt: skip
    return float(json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def dns_rtts(lab: Lab, port: int, count: int) -> list[float]:
    """Round-trip times (microseconds) of `count` queries client pod -> DNS service."""
    spec = json.dumps({"server": V4.kube_dns, "port": port, "count": count, "timeout": 1.0})
    proc = lab["client"].exec(sys.executable, "-I", str(AGENT), "dnsbench", spec)
    rtts = [float(x) for x in json.loads(proc.stdout)]
    lost = sum(1 for r in rtts if r < 0)
    if lost:
        raise LabError(f"{lost} of {count} DNS queries to port {port} got no answer")
    return rtts


def set_bypass(lab: Lab, on: bool) -> None:
    run_generator(lab, "apply" if on else "remove")


# --- new-flow rate --------------------------------------------------------------------

FLOW_SPORT = 10000  # first source port of a round's flows: below the ephemeral range
TABLE = "table inet mullvad_allow_k8s\ndelete table inet mullvad_allow_k8s\n"


def udp_flows(lab: Lab, count: int, window: int, first_port: int) -> float:
    """Seconds `count` new UDP flows take, client pod -> DNS service port 5300.

    Each query has its own socket bound to source port first_port + i, `window` of
    them in flight, and its socket is closed once answered.
    """
    msg = agent.build_query(1, "bench.cluster.local", agent.QTYPE_A)
    dst = (V4.kube_dns, DNS_ALT_PORT)

    def run() -> float:
        with selectors.DefaultSelector() as sel:
            opened = done = 0
            start = time.perf_counter()
            while done < count:
                while opened < count and opened - done < window:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    sock.bind((V4.client_pod, first_port + opened))
                    sock.connect(dst)
                    sock.send(msg)
                    sel.register(sock, selectors.EVENT_READ)
                    opened += 1
                events = sel.select(1.0)
                if not events:
                    raise LabError(f"{opened - done} UDP flows to {dst} got no answer")
                for key, _ in events:
                    answered: socket.socket = key.fileobj  # type: ignore[assignment]
                    answered.recv(4096)
                    sel.unregister(answered)
                    answered.close()
                    done += 1
            return time.perf_counter() - start

    return lab["client"].call(run)


def flow_rate(
    labs: tuple[Lab, Lab], table: str, args: argparse.Namespace, *, control: bool = False
) -> tuple[list[float], list[float], list[float]]:
    """Per-round ratios rate(with table) / rate(without), and the burst rates (flows/s)
    without and with. `control`: the table is loaded in neither lab (A/A)."""
    ratios: list[float] = []
    rates: dict[bool, list[float]] = {False: [], True: []}
    for rnd in range(args.flow_rounds):
        with_table = 0 if rnd % 4 in (0, 3) else 1  # which lab has it: ABBA across rounds
        for i, lab in enumerate(labs):
            lab["host"].nft(TABLE + (table if i == with_table and not control else ""))
            flush_conntrack(lab["host"])
        pair_ratios = []
        for pair in range(args.flow_pairs):
            first = FLOW_SPORT + pair * args.flow_burst
            order = (0, 1) if pair % 2 == 0 else (1, 0)
            seconds = {
                i: udp_flows(labs[i], args.flow_burst, args.flow_window, first) for i in order
            }
            pair_ratios.append(seconds[1 - with_table] / seconds[with_table])
            for i in (0, 1):
                rates[i == with_table].append(args.flow_burst / seconds[i])
        ratios.append(statistics.median(pair_ratios))
    return ratios, rates[False], rates[True]


CHAIN = re.compile(r"\n\tchain (\S+) \{\n(.*?)\n\t\}", re.S)


def cut_down(table: str, how: str) -> str:
    """Our table (as `nft list table` prints it) cut down for `--flow-ablation`."""

    def chain(match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        lines = body.splitlines()
        base = [i for i, line in enumerate(lines) if line.startswith("\t\ttype ")]
        if how == "without forward_guard":
            return "" if name.startswith("forward_guard") else match.group(0)
        if not base:
            return f"\n\tchain {name} {{\n\t}}"  # regular chains: emptied
        keep = len(lines) if how == "dispatch only" else base[0] + 1
        return f"\n\tchain {name} {{\n" + "\n".join(lines[:keep]) + "\n\t}"

    return CHAIN.sub(chain, table)


ABLATIONS = ("base chains, no rules", "dispatch only", "without forward_guard")


def spread(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"IQR {q1:.3f}-{q3:.3f}, min-max {min(values):.3f}-{max(values):.3f}"


@contextlib.contextmanager
def one_cpu(*labs: Lab) -> Iterator[int]:
    """This thread (so the client threads it starts) and every process of the labs on
    one CPU, the last this process may use; afterwards all get their CPUs back. Left to
    the scheduler, where each process lands changes from run to run and, at tens of
    microseconds a query, moves the figures more than our table does."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    tids = [tid for lab in labs for role in lab.roles for tid in lab[role].pids()]

    def pin(cpus: set[int]) -> None:
        os.sched_setaffinity(0, cpus)
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)

    pin({cpu})
    try:
        yield cpu
    finally:
        pin(allowed)


def flow_figures(lab: Lab, args: argparse.Namespace) -> None:
    """The new-flow rate figure: a second, identical lab; our table swapped between them."""
    twin = Lab(MullvadState("connected", allow_lan=True, split=True))
    try:
        twin.build()
        set_bypass(lab, True)  # the table exactly as `apply` loads it, tunnel address included
        table = lab["host"].exec("nft", "list", "table", "inet", "mullvad_allow_k8s").stdout
        labs = (lab, twin)
        with one_cpu(*labs) as cpu:
            flow_variants(labs, table, args, cpu)
    finally:
        errors = twin.destroy()
        if errors:
            print(f"cleanup problems: {errors}", file=sys.stderr)


def flow_variants(labs: tuple[Lab, Lab], table: str, args: argparse.Namespace, cpu: int) -> None:
    """Prints the new-flow figure, and those of the control and ablations if asked."""
    print(
        f"new UDP flows pod -> {V4.kube_dns}:{DNS_ALT_PORT}, {args.flow_window} in flight, "
        f"bursts of {args.flow_burst}; {args.flow_rounds} rounds of {args.flow_pairs} pairs; "
        f"client and both labs on CPU {cpu}"
    )
    variants = [("with our table / without", table, False, "goal >= 0.95")]
    if args.flow_control:
        variants.append(("A/A control, no table in either lab", table, True, "ideally 1"))
    if args.flow_ablation:
        variants += [(f"{how}, diagnostic", cut_down(table, how), False, "cost")
                     for how in ABLATIONS]  # fmt: skip
    for label, loaded, control, goal in variants:
        ratios, without, with_ = flow_rate(labs, loaded, args, control=control)
        print(
            f"new-flow rate ({label}): median burst rate without "
            f"{statistics.median(without):.0f} flows/s, with {statistics.median(with_):.0f}"
            f" flows/s; median per-round ratio {statistics.median(ratios):.3f} "
            f"({spread(ratios)}; {goal})"
        )
        print("  per-round ratios: " + " ".join(f"{r:.3f}" for r in ratios))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--seconds", type=float, default=1.5, help="iperf3 time per run")
    ap.add_argument("--queries", type=int, default=1000, help="DNS queries per run")
    ap.add_argument("--flow-rounds", type=int, default=32, help="new-flow rounds (default 32)")
    ap.add_argument("--flow-pairs", type=int, default=40, help="burst pairs a round (default 40)")
    ap.add_argument("--flow-burst", type=int, default=100, help="UDP flows a burst (default 100)")
    ap.add_argument("--flow-window", type=int, default=8, help="UDP flows in flight (default 8)")
    ap.add_argument("--flow-control", action="store_true", help="also run the new-flow A/A control")
    ap.add_argument(
        "--flow-ablation", action="store_true", help="also the new-flow rate of cut-down tables"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("netlab_bench: needs root (network namespaces)", file=sys.stderr)
        return 2

    lab = Lab(MullvadState("connected", allow_lan=True, split=True))
    try:
        lab.build()
        lab["web"].spawn(["iperf3", "-s", "-p", str(IPERF_PORT)])
        wait_listening(lab["web"], IPERF_PORT)
        tcp: dict[str, list[float]] = {"base": [], "bypass": []}
        p50: dict[str, list[float]] = {"base": [], "bypass": []}
        dns53: list[float] = []
        print(
            f"pod -> ClusterIP {V4.web_svc} (TCP) and {V4.kube_dns}:{DNS_ALT_PORT} (UDP DNS); "
            f"Mullvad emulation connected, allow LAN on; {args.rounds} rounds"
        )
        for rnd in range(args.rounds):
            order = ["base", "bypass"] if rnd % 2 == 0 else ["bypass", "base"]
            line = []
            for variant in order:
                set_bypass(lab, variant == "bypass")
                gbit = iperf(lab, args.seconds)
                with one_cpu(lab):
                    median = statistics.median(dns_rtts(lab, DNS_ALT_PORT, args.queries))
                    if variant == "bypass":
                        dns53.append(statistics.median(dns_rtts(lab, 53, args.queries)))
                tcp[variant].append(gbit)
                p50[variant].append(median)
                line.append(f"{variant} {gbit:6.2f} Gbit/s, DNS p50 {median:5.1f} us")
            print(f"round {rnd + 1}: " + " | ".join(line))
        # Each round measures both variants back to back: the median of the per-round
        # ratios is robust against drift and other load on the machine.
        tcp_ratio = statistics.median(
            x / b for x, b in zip(tcp["bypass"], tcp["base"], strict=True)
        )
        dns_ratio = statistics.median(
            x / b for x, b in zip(p50["bypass"], p50["base"], strict=True)
        )
        tb, tx = statistics.median(tcp["base"]), statistics.median(tcp["bypass"])
        db, dx = statistics.median(p50["base"]), statistics.median(p50["bypass"])
        print(
            f"TCP throughput (iperf3, {args.seconds:g} s runs): median base {tb:.2f} Gbit/s, "
            f"bypass {tx:.2f} Gbit/s; median per-round ratio {tcp_ratio:.3f} (goal >= 0.97)"
        )
        print(
            f"UDP DNS RTT p50 ({args.queries} queries a run): median base {db:.1f} us, "
            f"bypass {dx:.1f} us; median per-round ratio {dns_ratio:.3f} (goal <= 1.05)"
        )
        print(
            f"for reference, bypass on port 53 (blocked without it): median p50 "
            f"{statistics.median(dns53):.1f} us"
        )
        flow_figures(lab, args)
    finally:
        errors = lab.destroy()
        if errors:
            print(f"cleanup problems: {errors}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
