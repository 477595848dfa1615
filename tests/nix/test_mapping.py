"""nix/settings.nix: options -> the generator's JSON. Needs Nix only, not nixpkgs."""

from __future__ import annotations

import json

import pytest

from mullvad_allow_k8s.settings import SettingsError, parse_json, resolve
from tests.nix.cases import CASES, DEFAULTS_NIX, Case, schema
from tests.nix.nixeval import MAPPING, eval_error, evaluate, mapping_settings, nix_path

FIELDS = schema()


def test_keys_are_exactly_the_schema_keys(nix: str) -> None:
    data = mapping_settings(DEFAULTS_NIX)
    assert sorted(data) == sorted(f["key"] for f in FIELDS)


def test_each_key_reads_the_option_named_by_the_schema(nix: str) -> None:
    # Give every option a distinct marker value; each KEY must carry its own option's.
    markers = " ".join(f'{f["nix_option"]} = "marker-{f["key"]}";' for f in FIELDS)
    data = mapping_settings(f"{{ {markers} }}")
    assert data == {f["key"]: f"marker-{f['key']}" for f in FIELDS}


def test_value_shapes_are_what_the_json_reader_takes(nix: str) -> None:
    data = mapping_settings(
        f"""{DEFAULTS_NIX} // {{
          podCidrs = [ "10.42.0.0/16" "fd42::/56" ];
          machineAddresses = [ "192.168.1.20" ];
          inboundPorts = [ 80 443 "30000-32767" ];
          bridgeTable = true;
        }}"""
    )
    assert data["POD_CIDRS"] == ["10.42.0.0/16", "fd42::/56"]
    assert data["MACHINE_ADDRESSES"] == ["192.168.1.20"]
    assert data["INBOUND_PORTS"] == ["80", "443", "30000-32767"]  # numbers become strings
    assert data["BRIDGE_TABLE"] is True
    raw = parse_json(json.dumps(data))
    assert raw["POD_CIDRS"] == "10.42.0.0/16 fd42::/56"
    assert raw["INBOUND_PORTS"] == "80 443 30000-32767"
    assert raw["BRIDGE_TABLE"] == "yes"


def test_defaults_literal_maps_to_the_schema_defaults_except_ephemeral(nix: str) -> None:
    raw = parse_json(json.dumps(mapping_settings(DEFAULTS_NIX)))
    expected = {f["key"]: f["default"] for f in FIELDS}
    # EPHEMERAL_PORTS=auto would read /proc of the build machine: NixOS passes Linux's
    # default range (or the configured sysctl) instead.
    assert expected.pop("EPHEMERAL_PORTS") == "auto"
    assert raw.pop("EPHEMERAL_PORTS") == "32768-60999"
    assert raw == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_json_is_valid_for_the_generator(nix: str, case: Case) -> None:
    try:
        resolve([parse_json(json.dumps(mapping_settings(case.cfg())))])
    except SettingsError as err:
        pytest.fail(f"generator refused {case.name}: {err}")


@pytest.mark.parametrize(
    ("sysctl", "expected"),
    [
        ("null", "32768-60999"),
        ('"32768 60999"', "32768-60999"),
        ('"1024\t65000"', "1024-65000"),
        ('"  49152   65535 "', "49152-65535"),
    ],
)
def test_ephemeral_ports_from_sysctl(nix: str, sysctl: str, expected: str) -> None:
    assert evaluate(f"(import {nix_path(MAPPING)}).ephemeralPortsFromSysctl {sysctl}") == expected


def test_unreadable_sysctl_says_what_to_set(nix: str) -> None:
    err = eval_error(f'(import {nix_path(MAPPING)}).ephemeralPortsFromSysctl "lots"')
    assert 'cannot read boot.kernel.sysctl."net.ipv4.ip_local_port_range" = "lots"' in err
    assert 'set services.mullvadAllowK8s.ephemeralPorts = "LOW-HIGH"' in err
