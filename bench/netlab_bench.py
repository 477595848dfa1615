"""Data-path cost of the bypass, measured in the network-namespace lab (root only).

Pod -> ClusterIP service, with Mullvad's emulated firewall alone ("base") and with
Mullvad's firewall plus the table `mullvad-allow-k8s apply` loads ("bypass"):

* TCP throughput: iperf3 (Debian's) from the client pod to the web service's
  ClusterIP, DNAT-ed to the web pod. Goal: bypass / base >= 0.97.
* UDP DNS round trip: one query per fresh socket (a new conntrack entry each time,
  as resolvers do), p50. Goal: bypass p50 within 5% of base p50.

Why the DNS baseline uses port 5300: without the bypass, Mullvad's forward chain
rejects every pod's port-53 packet (`udp dport 53 reject`, notes §1.6), so there is
no port-53 baseline to compare with. Both variants therefore run the same DNS
exchange against the same CoreDNS stand-in behind the same service IP on port 5300,
which Mullvad does not single out: same DNAT, bridge, br_netfilter and conntrack
path, and the only difference is our table (plus what it causes in Mullvad's own
rules: the ct-mark accept and masquerade). Allow LAN is on in both variants, since
that is what lets cluster traffic through Mullvad at all without the bypass. The
port-53 p50 with the bypass is printed too, to show the real path costs the same.

Variants are interleaved round by round (ABBA order) and each ratio is the median of
the per-round ratios, so drift and other load on the machine hit both alike. The
lab's namespaces are created once and deleted at exit. Prints figures, asserts
nothing; exit status 0 unless the lab cannot be built.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netlab.mullvad_emu import MullvadState  # noqa: E402
from tests.netlab.nsutil import AGENT, LabError, Netns  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--seconds", type=float, default=1.5, help="iperf3 time per run")
    ap.add_argument("--queries", type=int, default=1000, help="DNS queries per run")
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
                median = statistics.median(dns_rtts(lab, DNS_ALT_PORT, args.queries))
                tcp[variant].append(gbit)
                p50[variant].append(median)
                if variant == "bypass":
                    dns53.append(statistics.median(dns_rtts(lab, 53, args.queries)))
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
    finally:
        errors = lab.destroy()
        if errors:
            print(f"cleanup problems: {errors}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
