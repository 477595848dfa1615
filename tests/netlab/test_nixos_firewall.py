"""NixOS' own firewall in the lab, with and without services.mullvadAllowK8s.openFirewall.

The ruleset is what nftables.service would load on NixOS for a configuration with our
module (loader = "unit", so its tables hold only NixOS' own): the real nftables.nix and
firewall-nftables.nix (../shared/nixos-modules, evaluated as tests/nix does) write it,
and it is loaded in the lab's host beside Mullvad's table and our bypass. Its input
chain (policy drop) judges what reaches the host itself: the API server (6443) from an
on-link LAN client and from off the LAN pass only with openFirewall (issue 24 finding 3:
our marks make Mullvad let them in, NixOS' firewall still drops them). A NodePort
forwarded into a pod never meets that chain (DNAT makes it forwarded traffic, and
NixOS' filterForward is off by default): it works either way, a control that the lab
itself works. The same rules hold NixOS' strict reverse-path filter (checkReversePath's
default, prerouting -140, the chain test_rpfilter.py models), which the off-link
client's packets pass too: with our tentative fwmark (-151) they route back by the LAN.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nix import nixeval

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Scenario, check
from .scenarios import load_bypass, run_generator, run_probes
from .topology import API_PORT, Lab

API = [PROBE_BY_ID[f"{name}_v{v}"] for name in ("lan_api", "remote_api") for v in (4, 6)]
CONTROL = [PROBE_BY_ID[f"lan_nodeport_v{v}"] for v in (4, 6)]
# Mullvad connected, LAN sharing on (an on-link IPv6 client needs it: neighbour
# discovery, probes.nd), split tunnelling available: off-link clients pass Mullvad's
# firewall only by our marks.
MULLVAD = MullvadState("connected", True, True)


def nixos_rules(open_firewall: bool, where: Path) -> str:
    """nftables.service's rules (the real modules' rulesScript) for the configuration."""
    lib, modules = nixeval.nixpkgs_lib(), nixeval.nixos_modules()
    if nixeval.nix_instantiate() is None:
        pytest.skip(nixeval.NO_NIX)
    if lib is None:
        pytest.skip(nixeval.NO_LIB)
    if modules is None:
        pytest.skip(nixeval.NO_MODULES)
    config = (
        '{ services.mullvadAllowK8s = { enable = true; loader = "unit"; '
        f"openFirewall = {'true' if open_firewall else 'false'}; }}; "
        "services.mullvad-vpn.enable = true; networking.nftables.enable = true; }"
    )
    script = nixeval.evaluate(
        nixeval.module_expr(lib, config, nixeval.NFTABLES_RULES, pkgs=nixeval.SCRIPTS_BY_TEXT)
    )
    assert isinstance(script, str)
    rules = nixeval.nixos_rules(script, where)
    assert "table inet nixos-fw {" in rules
    assert "fib saddr . mark . iif oif exists accept" in rules  # strict rpfilter, -140
    assert "mullvad_allow_k8s" not in rules  # loader = "unit": ours is the unit's
    assert ("6443" in rules) is open_firewall
    return rules


@pytest.mark.parametrize("open_firewall", [False, True], ids=["closed", "openFirewall"])
def test_lan_clients_reach_the_api_server_through_nixos_firewall_only_when_opened(
    open_firewall: bool, tmp_path: Path
) -> None:
    rules = nixos_rules(open_firewall, tmp_path)
    lab = Lab(MULLVAD, rp_filter=0)
    try:
        lab.build()
        lab["host"].nft(rules)
        load_bypass(lab, "generated")
        assert "table inet nixos-fw" in lab["host"].exec("nft", "list", "tables").stdout
        outcomes = run_probes(lab, API + CONTROL)
        lab.barrier(hops=4)
        counters = lab.counters()
        doctor = run_generator(lab, "doctor", check=False).stdout
    finally:
        lab.destroy()
    scenario = Scenario(MULLVAD, "generated", rp_filter=0)
    problems = []
    for probe in CONTROL + (API if open_firewall else []):
        want = probe.expect(scenario)
        assert want.ok
        problems += [f"{probe.id}: {p}" for p in check(probe, outcomes[probe.id], counters, want)]
    if not open_firewall:
        problems += [f"{p.id}: passed NixOS' firewall" for p in API if outcomes[p.id].ok]
    assert not problems, "\n".join(problems)
    # doctor reads the same firewall: what it drops, and NixOS' own way to open it.
    closed = f"[warning] nixos's input filter drops TCP {API_PORT} (HOST_PORTS)"
    if open_firewall:
        assert "[ok] no other input filter drops HOST_PORTS or the NodePort range" in doctor
    else:
        assert closed in doctor, doctor
        assert f"fix: networking.firewall.allowedTCPPorts = [ {API_PORT} ];" in doctor
