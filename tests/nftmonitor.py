"""Record the nftables transactions another namespace or container commits.

Used where "the table never goes missing" must be shown exactly (upgrades, reloads):
`nft monitor` reports every committed transaction, and marker transactions at the
start and the end make sure nothing in between is missed.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

TABLE = "inet mullvad_allow_k8s"
MARKER = "mak_monitor_"


class Transaction(list[str]):
    """The event lines of one committed transaction."""

    @property
    def events(self) -> list[str]:
        return self

    def touches_table(self, table: str = TABLE) -> bool:
        return any(e.endswith(f"table {table}") for e in self)

    def leaves_table_loaded(self, table: str = TABLE) -> bool:
        table_events = [e for e in self if e.endswith(f"table {table}")]
        return bool(table_events) and table_events[-1].startswith("add ")


@contextmanager
def record(monitor: Sequence[str], nft: Callable[[str], object]) -> Iterator[list[Transaction]]:
    """Transactions committed while the block runs.

    monitor: the argv running `nft monitor` in the target (podman exec, nsenter).
    nft: runs one nft command string in the target (for the marker transactions).
    """
    proc = subprocess.Popen(list(monitor), stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    seen: list[Transaction] = []
    current = Transaction()

    def sync(tag: str) -> None:
        """Commit marker transactions until the monitor reports one."""
        nonlocal current
        deadline = time.monotonic() + 20
        for attempt in range(200):
            name = f"{MARKER}{tag}_{attempt}"
            nft(f"add table inet {name} ; delete table inet {name}")
            wait_until = time.monotonic() + 0.2
            while (left := wait_until - time.monotonic()) > 0:
                try:
                    line = lines.get(timeout=left)
                except queue.Empty:
                    break
                if line is None:
                    raise AssertionError("nft monitor ended early")
                if line.startswith("# new generation"):
                    if any(f"table inet {name}" in e for e in current):
                        current = Transaction()
                        return
                    if not any(f"table inet {MARKER}" in e for e in current):
                        seen.append(current)
                    current = Transaction()
                elif line:
                    current.append(line)
            if time.monotonic() > deadline:
                break
        raise AssertionError("nft monitor did not report the marker transaction")

    try:
        sync("start")
        seen.clear()
        yield seen
        sync("end")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # e.g. unshare --fork ignores SIGTERM
            proc.kill()
            proc.wait(timeout=10)


def table_present_after_each(transactions: list[list[str]], table: str = TABLE) -> list[int]:
    """Indexes of the transactions after which TABLE was missing (it is present before)."""
    pattern = re.compile(rf"^(add|delete) table {re.escape(table)}(\s|$)")
    present, missing = True, []
    for index, events in enumerate(transactions):
        for event in events:
            if match := pattern.match(event):
                present = match.group(1) == "add"
        if not present:
            missing.append(index)
    return missing
