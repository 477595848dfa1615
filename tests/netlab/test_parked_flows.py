"""A pod-to-pod flow hidden from Mullvad's masquerade keeps its exemption for every
packet, also for the ones sent before any reply.

`nat_park` gives a new pod-to-pod flow a ct mark of ours just before Mullvad's nat
chain, which would otherwise masquerade it; the flow's next packet gets 0x00000f41 back
in `prerouting`, before Mullvad's forward chain. UDP stays "new" until the first reply, so
a client that sends several datagrams first (a stream, DNS retransmissions) sends them
with the parked mark: with LAN sharing off, Mullvad's forward chain drops all but the
first unless the mark is restored. Counted at the receiving pod, by payload.
"""

from __future__ import annotations

import json
import socket
import time

from .mullvad_emu import MullvadState
from .scenarios import load_bypass
from .topology import SPOOF_PAYLOAD, SPOOF_PORT, SPOOF_RECEIVERS, V4, Lab, watch_name

SENT = 5


def delivered() -> int:
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        load_bypass(lab, "generated")

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(SENT):  # one flow (same socket), no reply comes
                    sock.sendto(SPOOF_PAYLOAD, (V4.web_pod, SPOOF_PORT))
                    time.sleep(0.02)

        lab["client"].call(send)
        time.sleep(0.2)
        name = watch_name(SPOOF_RECEIVERS["web"], V4)
        out = lab["web"].exec("nft", "-j", "list", "counter", "inet", "netlab_rx", name).stdout
        return int(json.loads(out)["nftables"][1]["counter"]["packets"])
    finally:
        lab.destroy()


def test_every_datagram_of_a_parked_flow_reaches_the_pod() -> None:
    assert delivered() == SENT
