"""The rule-count baseline of bench/rules_per_packet.py, run as a test (issue 22, item 5).

The script counts, from nftables tracing in the lab, how many of our table's rules each
packet class meets per hook, and exits 1 when any figure rises above its BASELINE (or a
class traced no packet). The counts are exact and the same on every run, so a change
that adds a lookup to established packets fails `make test`, not only `make bench`.

It runs as a subprocess: the script builds and destroys its own lab and `nft monitor
trace` process, and its output (the whole table) is what a failure shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "rules_per_packet.py"


def test_rules_per_packet_within_baseline() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, (
        f"bench/rules_per_packet.py exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    # The table was printed and every class compared (not an early exit).
    assert "Our table's rules evaluated per packet" in done.stdout
    assert "established" in done.stdout
