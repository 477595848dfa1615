"""A pod-to-pod flow hidden from Mullvad's masquerade keeps its exemption for every
packet, also for the ones sent before any reply.

`nat_park` gives a new pod-to-pod flow a ct mark of ours just before Mullvad's nat
chain, which would otherwise masquerade it; the flow's next packet gets 0x00000f41 back
in `prerouting`, before Mullvad's forward chain. UDP stays "new" until the first reply, so
a client that sends several datagrams first (a stream, DNS retransmissions) sends them
with the parked mark: with LAN sharing off, Mullvad's forward chain drops all but the
first unless the mark is restored. Counted at the receiving pod, by payload.

This machine's own flows to pods are not parked (issue 21): their source, the bridge
address, lies in the pod range too, and a parked mark on the host's next datagram
(it leaves by the output hook, where no rule of ours restores it) met Mullvad's
output reject: EPERM on the second datagram, ECONNREFUSED on the third.
"""

from __future__ import annotations

import json
import socket
import time

from .mullvad_emu import MullvadState
from .scenarios import load_bypass
from .topology import SPOOF_PAYLOAD, SPOOF_PORT, SPOOF_RECEIVERS, V4, Lab, watch_name

SENT = 5


def delivered(sender: str) -> tuple[int, list[str]]:
    """(datagrams counted at the web pod, errors the sender's socket reported)."""
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        load_bypass(lab, "generated")
        errors: list[str] = []
        # A server that has not answered yet (bound, so the pod sends no ICMP error,
        # which would be a reply of the flow).
        server = lab["web"].call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        lab["web"].call(lambda: server.bind(("0.0.0.0", SPOOF_PORT)))

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(SENT):  # one flow (same socket), no reply comes
                    try:
                        sock.sendto(SPOOF_PAYLOAD, (V4.web_pod, SPOOF_PORT))
                    except OSError as exc:
                        errors.append(repr(exc))
                    time.sleep(0.02)

        lab[sender].call(send)
        time.sleep(0.2)
        name = watch_name(SPOOF_RECEIVERS["web"], V4)
        out = lab["web"].exec("nft", "-j", "list", "counter", "inet", "netlab_rx", name).stdout
        server.close()
        return int(json.loads(out)["nftables"][1]["counter"]["packets"]), errors
    finally:
        lab.destroy()


def test_every_datagram_of_a_parked_flow_reaches_the_pod() -> None:
    assert delivered("client") == (SENT, [])


def test_every_datagram_this_machine_sends_to_a_pod_before_a_reply_arrives() -> None:
    assert delivered("host") == (SENT, [])
