"""nix/settings.nix: options -> the generator's JSON. Needs Nix only, not nixpkgs."""

from __future__ import annotations

import json

import pytest

from mullvad_allow_k8s.presets import PRESETS
from mullvad_allow_k8s.settings import AUTO, RETIRED, SettingsError, parse_json, resolve
from tests.nix.cases import BUILD_TIME_SETTINGS, CASES, DEFAULTS_NIX, Case, schema
from tests.nix.nixeval import MAPPING, evaluate, mapping_settings, nix_path

FIELDS = schema()


def test_keys_are_exactly_the_schema_keys(nix: str) -> None:
    data = mapping_settings(DEFAULTS_NIX)
    assert sorted(data) == sorted(f["key"] for f in FIELDS)
    assert not set(data) & set(RETIRED)


def test_each_key_reads_the_option_named_by_the_schema(nix: str) -> None:
    # Give every option a distinct marker value; each KEY must carry its own option's.
    # (One-element lists: the one value every mapping passes through unchanged.)
    markers = " ".join(f'{f["nix_option"]} = [ "marker-{f["key"]}" ];' for f in FIELDS)
    data = mapping_settings(f"{{ {markers} }}")
    assert data == {f["key"]: [f"marker-{f['key']}"] for f in FIELDS}


def test_value_shapes_are_what_the_json_reader_takes(nix: str) -> None:
    data = mapping_settings(
        f"""{DEFAULTS_NIX} // {{
          podCidrs = [ "10.42.0.0/16" "fd42::/56" ];
          machineAddresses = [ "192.168.1.20" ];
          hostPorts = [ 80 443 "30000-32767" ];
          bridgeTable = true;
        }}"""
    )
    assert data["POD_CIDRS"] == ["10.42.0.0/16", "fd42::/56"]
    assert data["MACHINE_ADDRESSES"] == ["192.168.1.20"]
    assert data["HOST_PORTS"] == ["80", "443", "30000-32767"]  # numbers become strings
    assert data["BRIDGE_TABLE"] is True
    raw = parse_json(json.dumps(data))
    assert raw["POD_CIDRS"] == "10.42.0.0/16 fd42::/56"
    assert raw["HOST_PORTS"] == "80 443 30000-32767"
    assert raw["BRIDGE_TABLE"] == "yes"


def test_defaults_literal_maps_to_the_schema_defaults(nix: str) -> None:
    # The schema's defaults, except the four the CLI detects, which the module declares.
    raw = parse_json(json.dumps(mapping_settings(DEFAULTS_NIX)))
    assert raw == {f["key"]: f["default"] for f in FIELDS} | BUILD_TIME_SETTINGS
    assert {f["key"]: f["default"] for f in FIELDS if f["key"] in BUILD_TIME_SETTINGS} == {
        "PRESET": AUTO, "POD_CIDRS": AUTO, "SERVICE_CIDRS": AUTO, "NODE_NETWORKS": AUTO,
    }  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_json_is_valid_for_the_generator(nix: str, case: Case) -> None:
    try:
        resolve([parse_json(json.dumps(mapping_settings(case.cfg())))])
    except SettingsError as err:
        pytest.fail(f"generator refused {case.name}: {err}")


# ---------------------------------------------------------------- hostPorts


@pytest.mark.parametrize(
    ("host_ports", "expected"),
    [
        ("null", ""),  # the generator's "empty: the preset's"
        ("[ ]", "none"),  # [ ] is none, not the preset's
        ("[ 6443 ]", ["6443"]),
        ('[ 6443 9345 "30000-32767" ]', ["6443", "9345", "30000-32767"]),
    ],
)
def test_host_ports_values(nix: str, host_ports: str, expected: object) -> None:
    data = mapping_settings(f"{DEFAULTS_NIX} // {{ hostPorts = {host_ports}; }}")
    assert data["HOST_PORTS"] == expected


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_null_host_ports_are_the_presets_and_empty_are_none(nix: str, preset: str) -> None:
    def host_ports(value: str) -> object:
        cfg = f'{DEFAULTS_NIX} // {{ preset = "{preset}"; hostPorts = {value}; }}'
        return resolve([parse_json(json.dumps(mapping_settings(cfg)))]).host_ports

    assert host_ports("null") == tuple((p, p) for p in PRESETS[preset].host_ports)
    assert host_ports("null") == resolve([{"PRESET": preset}]).host_ports
    assert host_ports("[ ]") == ()
    assert host_ports('[ 8443 "8000-8099" ]') == ((8000, 8099), (8443, 8443))


@pytest.mark.parametrize(
    ("inbound_ports", "expected"),
    [
        ("null", None),
        ('"non-ephemeral"', None),  # the old default goes: hostPorts' own default
        ("[ 80 443 6443 ]", [80, 443, 6443]),
        ('[ "30000-32767" ]', ["30000-32767"]),
    ],
)
def test_host_ports_from_inbound_ports(nix: str, inbound_ports: str, expected: object) -> None:
    """0.1's inboundPorts as hostPorts' default, as the generator's settings.migrate does."""
    expr = f"(import {nix_path(MAPPING)}).hostPortsFromInboundPorts {inbound_ports}"
    assert evaluate(expr) == expected
