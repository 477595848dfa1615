"""Property: any input either renders a ruleset the kernel accepts or is refused in one line.

And no input can add a statement: the rendered file's rules are always the fixed
template's rules; user values only ever appear as set elements.
"""

from __future__ import annotations

import re

import netaddr
import pytest
from hypothesis import HealthCheck, event, example, given, settings
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
# Prefixes whose address reads as a netmask (fc00:: = 7 leading ones): the refusal must
# still name the real reason, not a prefix limit taken from the address.
MASKLIKE = ["fc00::/7", "fc00::/8", "fc00::/64", "fe00::/7", "ff00::/8", "c0a8::/16"]
word = st.one_of(
    cidr_like, v6_like, port_like, st.sampled_from(NASTY + MASKLIKE), st.text(max_size=12)
)
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
        "HOST_PORTS": st.sampled_from(["", "none", "6443", "6443,9345 16443-16444"]),
        "TUNNEL_INTERFACE": st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True),
        "CLUSTER_INTERFACES": st.lists(
            st.from_regex(r"[A-Za-z0-9_.-]{1,14}\*?", fullmatch=True), min_size=1, max_size=4
        ).map(" ".join),
        "NODE_NETWORKS": st.lists(
            st.builds(
                lambda cidr, iface: f"{cidr}@{iface}",
                valid_cidr,
                st.from_regex(r"[A-Za-z0-9_.-]{1,14}\*?", fullmatch=True),
            ),
            max_size=3,
        ).map(lambda words: " ".join(words) or "none"),
    }
)
# Values written inside a rule rather than as set elements: the tunnel's name. An
# injection attempt for each, which a looser name pattern would let through.
tunnel_injection = st.fixed_dictionaries(
    {
        "TUNNEL_INTERFACE": st.sampled_from(
            [
                'wg0" ct mark set 0x00000f41 meta mark set 0x6d6f6c65 #',
                'wg0" accept #',
                "wg0\nflush ruleset",
                "wg0 }",
            ]
        ),
    }
)
# The node networks' bridges are written into set elements, quoted: words that end the
# quote (values split at blanks, so an attempt is one word), each tried on its own.
node_injection = st.fixed_dictionaries(
    {
        "NODE_NETWORKS": st.sampled_from(
            [
                '172.18.0.0/16@br-0"}',
                '172.18.0.0/16@br-0";flush',
                '172.18.0.0/16@br-0"."x',
                '172.18.0.0/16@br-0" accept #',
                "172.18.0.0/16@br-0\nflush ruleset",
                "172.18.0.0/16@*",
            ]
        ),
    }
)
injection = st.one_of(tunnel_injection, node_injection)
raw = st.dictionaries(st.sampled_from([f.key for f in SCHEMA if f.key != "OUTPUT"]), value)


def skeleton(text: str) -> list[str]:
    """The file without comments, with every element list emptied and every interface
    name written in a rule replaced by IF, so only user values that stay values match."""
    text = re.sub(r"elements = \{[^}]*\}", "", text)
    text = re.sub(r'comment "[^"]*"', 'comment ""', text)
    text = re.sub(r'iifname (!= )?"[A-Za-z0-9_.-]{1,15}"', r'iifname \1"IF"', text)
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
                # node networks add their rules (and only then): the template has them too
                "NODE_NETWORKS": "172.31.255.0/24@IF" if s.node_networks else "none",
                **({} if s.pod_cidrs else {"PRESET": "kind"}),
            }
        ],
    )
    return skeleton(ruleset.render(base))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(raw, valid, injection))
@example({"POD_CIDRS": "fc00::/7"})
@example({"SERVICE_CIDRS": "fc00::/8"})
@example({"POD_CIDRS": "fe00::/7"})
# Overlapping elements of an interval set make nft refuse the file (found by CI).
@example({"POD_CIDRS": "10.128.0.0/9", "NODE_NETWORKS": "172.16.0.0/12@0 172.16.0.0/12@0*"})
@example({"PRESET": "kind", "NODE_NETWORKS": "172.16.0.0/12@br-1 172.18.0.0/16@br-*"})
def test_any_input_renders_a_loadable_ruleset_or_is_refused(values: dict[str, str]) -> None:
    try:
        s = resolve([values])
    except SettingsError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(f"{err.key}: ")
        # The reason is the real one: a prefix limit is the family's width.
        if "prefix length must be" in err.reason:
            assert err.reason.endswith(("0-32", "0-128")), err
        event("refused")
        return
    event("rendered")
    text = ruleset.render(s)
    assert skeleton(text) == template(s)
    if not s.bridge_table:  # this kernel may lack nf_conntrack_bridge; covered elsewhere
        nft.check(text)
