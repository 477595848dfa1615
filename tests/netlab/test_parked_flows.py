"""A pod-to-pod flow hidden from Mullvad's masquerade keeps its exemption for every
packet, also for the ones sent before any reply.

`nat_park` gives a new pod-to-pod flow a ct mark of ours just before Mullvad's nat
chain, which would otherwise masquerade it; the flow's next packet gets 0x00000f41 back
in `prerouting`, before Mullvad's forward chain. UDP stays "new" until the first reply, so
a client that sends several datagrams first (a stream, DNS retransmissions) sends them
with the parked mark: with LAN sharing off, Mullvad's forward chain drops all but the
first unless the mark is restored. Counted at the receiving pod, by payload.

This machine's own flows to pods are not parked (issue 21's functional defect): their
source, the bridge address, lies in the pod range too, and a parked mark on the host's
next datagram (it leaves by the output hook, where no rule of ours restores it) met
Mullvad's output reject: EPERM.

The matrix, in one lab (scenarios.Cells): Mullvad Connected and Blocked (our table
applied while connected), LAN sharing off and on, and the arms:

* "none", Mullvad alone: with LAN sharing off nothing gets through (pod to pod: its
  forward chain; the machine: its output chain, EPERM); with it on, all of it;
* "generated", our table: every datagram arrives, no error;
* a control each, our table without the rule the test depends on: "unrestored" (pod to
  pod: prerouting does not give the parked mark back: only the first datagram arrives)
  and "host_parked" (the machine's flow: nat_park without `ct label 126 return`, issue
  21's fix: the second datagram meets Mullvad's reject, EPERM).

Not run: the controls with LAN sharing on, where Mullvad accepts the parked datagrams
as it accepts any to a private address (nothing to tell apart); rp_filter, which sees
neither flow (bridged, and sent by this machine).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from functools import partial

import pytest

from .mullvad_emu import MullvadState
from .nsutil import LabError
from .scenarios import Cell, Cells, arm_tables, run_generator, weakened
from .topology import SPOOF_PAYLOAD, SPOOF_PORT, SPOOF_RECEIVERS, V4, Lab, read_counters, watch_name

SENT = 5
RESTORE = "ct mark set 0x00000f41"  # prerouting's restore of a parked mark
RESTORING = "ct mark & 0x7fffffff == 0x00000f41"
NOT_PARKED = "ct label 126 return"  # nat_park: the machine's own flows


@pytest.fixture(scope="module")
def cells() -> Iterator[Cells]:
    with Lab(MullvadState("connected", False, True)).built() as lab:
        # A server that never answers (bound, so the pod sends no ICMP error, which
        # would be a reply of the flow).
        server = lab["web"].call(partial(socket.socket, socket.AF_INET, socket.SOCK_DGRAM))
        with server:
            server.bind(("0.0.0.0", SPOOF_PORT))
            yield _arms(lab)


def _arms(lab: Lab) -> Cells:
    """Our table's arm and the two controls made from it."""
    ours = run_generator(lab, "generate", own=True).stdout
    restoring = [line for line in ours.split("\n") if RESTORING in line]
    if len(restoring) != 1 or f" {RESTORE} " not in restoring[0]:
        raise LabError(f"no rule restoring a parked mark in our table: {restoring}")
    unrestored = ours.replace(restoring[0], restoring[0].replace(f" {RESTORE} ", " "))
    controls = {"unrestored": unrestored, "host_parked": weakened(ours, delete=[NOT_PARKED])}
    return Cells(lab, arm_tables(lab, **controls))


def _send() -> list[str]:
    """One flow (one socket), SENT datagrams before any reply (none comes), in order on
    one CPU; the errors the socket reported."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # this thread only (Netns.call)
    errors = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(SENT):
            try:
                sock.sendto(SPOOF_PAYLOAD, (V4.web_pod, SPOOF_PORT))
            except OSError as exc:
                errors.append(type(exc).__name__)
    return errors


def delivered(cells: Cells, cell: Cell, sender: str) -> tuple[int, list[str]]:
    """(datagrams counted at the web pod, errors the sender's socket reported)."""
    lab = cells.lab
    cells.enter(cell)
    lab["web"].exec("nft", "reset", "counters", "table", "inet", "netlab_rx")
    errors = lab[sender].call(_send)
    lab.barrier()  # pod -> machine's bridge -> web pod
    name = watch_name(SPOOF_RECEIVERS["web"], V4)
    return read_counters(lab["web"], "netlab_rx")[name], errors


def _cells(control: str) -> list[Cell]:
    return [
        Cell(state, lan, arm)
        for state in ("connected", "blocked")
        for lan in (False, True)
        for arm in ("none", "generated", control)
        if not (arm == control and lan)
    ]


@pytest.mark.parametrize("cell", _cells("unrestored"), ids=lambda c: c.id)
def test_every_datagram_of_a_parked_flow_reaches_the_pod(cells: Cells, cell: Cell) -> None:
    want = {"none": SENT if cell.lan else 0, "generated": SENT, "unrestored": 1}[cell.arm]
    assert delivered(cells, cell, "client") == (want, [])


@pytest.mark.parametrize("cell", _cells("host_parked"), ids=lambda c: c.id)
def test_every_datagram_this_machine_sends_to_a_pod_before_a_reply_arrives(
    cells: Cells, cell: Cell
) -> None:
    count, errors = delivered(cells, cell, "host")
    if cell.arm == "generated" or cell.lan:
        assert (count, errors) == (SENT, [])
    elif cell.arm == "none":  # Mullvad's output reject, every datagram
        assert (count, errors) == (0, ["PermissionError"] * SENT)
    else:  # parked after the first: Mullvad's reject (its ICMP error, a packet of the
        # flow, gives the mark back in prerouting: the later datagrams pass)
        assert count < SENT and "PermissionError" in errors, (count, errors)
