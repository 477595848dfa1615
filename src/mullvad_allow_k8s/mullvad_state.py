"""What `doctor` says of Mullvad itself, in words: its tunnel state and version, how its
split tunnel selects traffic, local network sharing, and the tunnel's addresses.

Everything is read from Mullvad's own firewall table (what the kernel enforces, so it
cannot disagree with what the bypass meets) and, where the `mullvad` CLI is installed,
from the daemon (`mullvad status`, `mullvad version`, run through the trust boundary).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from . import marks
from .detect.boundary import UntrustedError

Table = list[dict[str, Any]]
Runner = Callable[[Sequence[str]], "tuple[int, bytes] | None"]

NET_CLS = "net_cls"
CGROUP2 = "cgroup2"
NET_CLS_CLASSID = marks.NET_CLS_CLASSID.value


def _rule_texts(table: Table, chain: str) -> list[str]:
    return [
        json.dumps(item["rule"].get("expr", []), sort_keys=True)
        for item in table
        if "rule" in item and item["rule"].get("chain") == chain
    ]


def split_mechanism(table: Table) -> str | None:
    """How Mullvad's `mangle` chain picks excluded processes: net_cls (cgroup v1), cgroup2,
    or None: no split-tunnel rules at all (then no `ct mark` accept rules either)."""
    for rule in _rule_texts(table, "mangle"):
        if '"cgroup"' in rule and str(NET_CLS_CLASSID) in rule:
            return NET_CLS
        if '"cgroupv2"' in rule:
            return CGROUP2
    return None


def tunnel_up(table: Table, tunnel: str) -> bool:
    """Connected (or connecting): its output chain lets packets out by the tunnel; in the
    Blocked state (an error, or disconnected with lockdown mode) no rule names it."""
    return any(f'"{tunnel}"' in r and '"accept"' in r for r in _rule_texts(table, "output"))


def daemon_says(run: Runner) -> dict[str, str]:
    """`mullvad version` (Current version, mullvad-daemon version) and the first line of
    `mullvad status`; {} without the CLI or a daemon that answers."""
    out: dict[str, str] = {}
    for word in ("version", "status"):
        argv = ("mullvad", word)
        try:
            result = run(argv)
        except (OSError, ValueError, UntrustedError) as e:  # a time-out among them
            out.setdefault("error", f"`mullvad {word}`: {e}")
            continue
        if result is None or result[0] != 0:
            continue
        text = result[1].decode("utf-8", "replace")
        lines = [line for line in map(_printable, text.splitlines()) if line]
        if word == "status":
            out.update({"status": lines[0]} if lines else {})
            continue
        for line in lines:
            key, colon, value = line.partition(":")
            if colon and key.strip() in ("Current version", "mullvad-daemon version"):
                out[key.strip()] = value.strip()
    return out


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable()).strip()[:160]


def describe(table: Table, tunnel: str, lan_sharing: bool, addresses: Sequence[object]) -> str:
    """One sentence: state, split tunnel, LAN sharing, tunnel addresses."""
    state = "connected (or connecting)" if tunnel_up(table, tunnel) else "blocked"
    mechanism = split_mechanism(table)
    split = {
        NET_CLS: f"split tunnel by net_cls (cgroup v1, classid {NET_CLS_CLASSID:#x})",
        CGROUP2: "split tunnel by cgroup2 (socket cgroupv2)",
        None: "no split-tunnel rules",
    }[mechanism]
    lan = "local network sharing on" if lan_sharing else "local network sharing off"
    where = ", ".join(str(a) for a in addresses) or "none"
    return f"Mullvad's firewall: {state}; {split}; {lan}; {tunnel} addresses: {where}"


NO_SPLIT_FIX = (
    "Mullvad adds split-tunnel rules (and with them the `ct mark "
    f"{marks.CT_MARK.nft} accept` rules the bypass relies on) only where it finds a "
    "cgroup for excluded processes: official builds use cgroup v1 net_cls. Mount it "
    "(`sudo mkdir -p /sys/fs/cgroup/net_cls && sudo mount -t cgroup -o net_cls net_cls "
    "/sys/fs/cgroup/net_cls`, or the kernel command line "
    "`systemd.unified_cgroup_hierarchy=0`) and restart mullvad-daemon; `mullvad "
    "split-tunnel` then works"
)
