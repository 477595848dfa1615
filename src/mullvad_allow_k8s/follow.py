"""`follow`: keep a loaded table in step with what `auto` detects (issue 12).

`kind create cluster` after the package was installed makes a Docker or Podman network
with a subnet nobody knew before; `k3s` or `kubeadm init` write their config files
later still. `follow` re-reads the machine when the container engines report a change
(their own event streams: `docker events`, `podman events`) and at least every
`interval` seconds (config files, libvirt, an engine that started later), and applies
the settings again whenever what they resolve to changed.

Why this and not per-packet matching: the node networks are only known by their
subnet and bridge, which the engines choose at creation; matching every `br-*` bridge
per packet would exempt every Docker network, not just the cluster's. Each exempted
node network is bound to its own bridge, so a stale entry can only match that bridge:
Docker names bridges after the network's random id, so a removed network's bridge name
does not come back. Podman's numbered names (podmanN, cni-podmanN) can, which is why
`follow` also re-reads after container events and on its interval.

It never loads a table that is not loaded: `remove` (or a stopped service) stays
respected; and a settings or detection error leaves the loaded table as it is.
"""

from __future__ import annotations

import contextlib
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from .detect import boundary

# Event streams that announce networks and containers coming and going. Podman 4.3
# reports no network creation, but kind and minikube start containers on it right after.
ENGINE_EVENTS: tuple[tuple[str, ...], ...] = (
    ("docker", "events", "--filter", "type=network", "--filter", "type=container"),
    ("podman", "events", "--filter", "type=network", "--filter", "type=container"),
)
QUIET = 2.0  # seconds without events before re-reading (kind makes many in a burst)


class EventStreams:
    """The engines' event streams as one waitable; restarts the ones that ended."""

    def __init__(self, commands: Sequence[tuple[str, ...]] = ENGINE_EVENTS) -> None:
        self.commands = [c for c in commands if boundary.program(c[0])]
        self.running: dict[tuple[str, ...], subprocess.Popen[bytes]] = {}
        self.selector = selectors.DefaultSelector()

    def _start_missing(self) -> None:
        for command in self.commands:
            process = self.running.get(command)
            if process is not None and process.poll() is None:
                continue
            if process is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(process.stdout)  # type: ignore[arg-type]
            try:  # argv, PATH and environment fixed by the trust boundary
                process = boundary.popen(command, stdout=subprocess.PIPE)
            except OSError:
                continue
            if process is None:
                continue
            self.running[command] = process
            self.selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def wait(self, timeout: float) -> bool:
        """True when an event came within `timeout` (then after QUIET seconds of none)."""
        self._start_missing()
        deadline = time.monotonic() + timeout
        seen = False
        while True:
            left = (time.monotonic() + QUIET if seen else deadline) - time.monotonic()
            if left <= 0:
                return seen
            ready = self.selector.select(left)
            if not ready:
                if seen:
                    return True
                continue
            for key, _ in ready:
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line:
                    seen = True
                else:  # the engine's stream ended (daemon stopped): restart later
                    self.selector.unregister(key.fileobj)

    def close(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)


def follow(
    step: Callable[[], str | None],
    *,
    interval: float,
    events: EventStreams | None = None,
    rounds: int | None = None,
) -> int:
    """Run `step` now, after engine events and every `interval` seconds.

    `step` applies the settings if they changed and returns a line to log, or None.
    `rounds` bounds the loop (tests); None runs until stopped.
    """
    streams = events or EventStreams()
    try:
        for last in _rounds(rounds):
            message = step()
            if message:
                print(message, file=sys.stderr, flush=True)
            if not last:
                streams.wait(interval)
    finally:
        streams.close()
    return 0


def _rounds(limit: int | None) -> Iterator[bool]:
    """True for the last round."""
    count = 0
    while limit is None or count < limit:
        count += 1
        yield limit is not None and count == limit
