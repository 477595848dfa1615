"""Property: any input either renders a ruleset the kernel accepts or is refused in one line.

And no input can add a statement: the rendered file's rules are always the fixed
template's rules; user values only ever appear as set elements.
"""

from __future__ import annotations

import re

import netaddr
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mullvad_allow_k8s import nft, ruleset
from mullvad_allow_k8s.settings import SCHEMA, Settings, SettingsError, resolve

pytestmark = pytest.mark.kernel

NASTY = ["}", "{", ";", '"', "\n", "#", " accept", "flush ruleset", "@", "$", "\\", "/", ",", "-"]
cidr_like = st.builds(
    lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}/{p}",
    st.sampled_from([10, 172, 192, 100, 8]),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 33),
)
v6_like = st.builds(lambda h, p: f"fd{h:02x}::/{p}", st.integers(0, 255), st.integers(0, 129))
port_like = st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 70000), st.integers(0, 70000))
word = st.one_of(cidr_like, v6_like, port_like, st.sampled_from(NASTY), st.text(max_size=12))
value = st.lists(word, max_size=4).map(" ".join)


def _network(base: str, bits: int, prefix: int) -> str:
    net = netaddr.IPNetwork(base)
    size = 32 if net.version == 4 else 128
    prefix = max(net.prefixlen, min(prefix, size))
    host = netaddr.IPAddress(int(net.first) + bits % net.size, net.version)
    return str(netaddr.IPNetwork(f"{host}/{prefix}").cidr)


valid_cidr = st.builds(
    _network,
    st.sampled_from(["10.128.0.0/9", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]),
    st.integers(0, 2**64),
    st.integers(8, 128),
)
valid = st.fixed_dictionaries(
    {
        "POD_CIDRS": st.lists(valid_cidr, min_size=1, max_size=6).map(" ".join),
        "MACHINE_ADDRESSES": st.sampled_from(["auto", "192.168.1.5 2001:db8::5", "198.51.100.1"]),
        "PUBLIC_ADDRESSES": st.sampled_from(["", "203.0.113.7", "2001:db8:1::7 203.0.113.8"]),
        "INBOUND_PORTS": st.sampled_from(["non-ephemeral", "80,443,6443,30000-32767", "22"]),
        "TUNNEL_INTERFACE": st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True),
    }
)
raw = st.dictionaries(st.sampled_from([f.key for f in SCHEMA if f.key != "OUTPUT"]), value)


def skeleton(text: str) -> list[str]:
    """The file without comments and with every element list emptied."""
    text = re.sub(r"elements = \{[^}]*\}", "", text)
    text = re.sub(r'comment "[^"]*"', 'comment ""', text)
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def template(s: Settings) -> list[str]:
    base = resolve(
        [
            {
                "MACHINE_ADDRESSES": "auto" if s.machine_addresses is None else "192.168.1.1",
                "BRIDGE_TABLE": "yes" if s.bridge_table else "no",
                "TUNNEL_INTERFACE": s.tunnel_interface,
            }
        ],
    )
    return skeleton(ruleset.render(base))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(raw, valid))
def test_any_input_renders_a_loadable_ruleset_or_is_refused(values: dict[str, str]) -> None:
    try:
        s = resolve([values])
    except SettingsError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(f"{err.key}: ")
        event("refused")
        return
    event("rendered")
    text = ruleset.render(s)
    assert skeleton(text) == template(s)
    if not s.bridge_table:  # this kernel may lack nf_conntrack_bridge; covered elsewhere
        nft.check(text)
