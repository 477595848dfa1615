"""Generator benchmark: prints figures, asserts nothing (targets are read by people).

(a) `mullvad-allow-k8s generate` wall time as a ratio to a bare `python3 -c pass`,
    median of several runs. Goal: at most 3x.
(b) Rules per chain, and generate+check time, for 10, 1,000 and 10,000 cluster CIDRs.
    Goal: rules per chain constant; 10,000 CIDRs under 2 s.
(c) Peak memory (max RSS) of generate+check with 10,000 CIDRs.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mullvad_allow_k8s import nft, ruleset  # noqa: E402
from mullvad_allow_k8s.settings import resolve  # noqa: E402

RUNS = 9


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
    )
    return time.perf_counter() - start


def startup_ratio() -> None:
    bare = [sys.executable, "-c", "pass"]
    gen = [sys.executable, "-m", "mullvad_allow_k8s", "generate", "--settings", "none"]
    # The same ranges given, so nothing is detected: what a settings file with explicit
    # values (or the Nix build) costs.
    given = [*gen, "--preset", "kubeadm", "--pod-cidrs", "10.244.0.0/16"]
    given += ["--service-cidrs", "10.96.0.0/12", "--node-networks", "none"]
    wall(gen)  # warm the page cache
    lib = [sys.executable, "-c", "import netaddr"]
    runs = [(wall(bare), wall(gen), wall(lib), wall(given)) for _ in range(RUNS)]  # interleaved
    b, g, n, e = (statistics.median(r[i] for r in runs) for i in range(4))
    print(
        f"(a) python3 -c 'import netaddr' alone: median {n * 1000:.1f} ms, ratio {n / b:.2f}x "
        "(the validation library's import is most of the start-up cost)"
    )
    print(
        f"(a) generate, ranges given: median {e * 1000:.1f} ms, python3 -c pass: "
        f"{b * 1000:.1f} ms, ratio {e / b:.2f}x (goal <= 3x)"
    )
    print(
        f"(a) generate, defaults (auto: reads the machine, the engines' CLIs among it): "
        f"median {g * 1000:.1f} ms, ratio {g / b:.2f}x"
    )


def cidrs(n: int) -> str:
    """n disjoint /24s inside 10.128.0.0/9 (outside Mullvad's protected addresses)."""
    base = 10 << 24 | 128 << 16
    return " ".join(
        f"{(base + (i << 8)) >> 24 & 255}.{(base + (i << 8)) >> 16 & 255}."
        f"{(base + (i << 8)) >> 8 & 255}.0/24"
        for i in range(0, 2 * n, 2)  # every other /24 so they cannot be merged
    )


def rules_per_chain(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, body in re.findall(r"chain (\w+) \{\n(.*?)\n\t\}", text, re.S):
        counts[name] = sum(
            1
            for line in body.splitlines()
            if line.strip() and not line.strip().startswith(("#", "type "))
        )
    return counts


def scale() -> None:
    can_check = True
    for n in (10, 1_000, 10_000):
        start = time.perf_counter()
        settings = resolve([{"POD_CIDRS": cidrs(n), "SERVICE_CIDRS": "172.16.0.0/16"}])
        text = ruleset.render(settings)
        rendered = time.perf_counter() - start
        checked = "n/a"
        if can_check:
            try:
                t0 = time.perf_counter()
                nft.check(text)
                checked = f"{time.perf_counter() - t0:.3f} s"
            except nft.NftError as err:
                can_check = False
                checked = f"not checked ({err})"
        total = time.perf_counter() - start
        print(
            f"(b) {n:>6} CIDRs: rules per chain {rules_per_chain(text)}; "
            f"generate {rendered:.3f} s, check {checked}, total {total:.3f} s "
            f"(goal: 10,000 under 2 s), file {len(text) / 1024:.0f} KiB"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(c) peak RSS: this process {rss:.0f} MiB, largest child {children:.0f} MiB")


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]} at {sys.executable}; nft backend: {nft.backend().name}")
    startup_ratio()
    scale()
