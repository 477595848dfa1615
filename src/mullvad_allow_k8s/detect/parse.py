"""Parsing what the readers read: CIDRs, YAML, JSON, flags, KEY=VALUE files.

Every helper raises DetectError naming where the text came from and what is wrong.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from typing import Any

import netaddr

from ..settings import IFNAME  # a Linux interface name as the ruleset may use it
from .host import DetectError


def cidr(value: object, where: str, what: str) -> str:
    """One validated CIDR, as written (host bits, which Kubernetes masks, are masked)."""
    text = str(value).strip() if isinstance(value, str | int | float) else ""
    address, slash, prefix = text.partition("/")
    problem = f"{what}: {value!r} is not a CIDR (ADDRESS/PREFIX)"
    if not slash or not prefix.isdigit() or len(prefix) > 3:
        raise DetectError(where, problem)
    try:
        ip = netaddr.IPAddress(address, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise DetectError(where, problem) from None
    width = 32 if ip.version == 4 else 128
    if int(prefix) > width:
        raise DetectError(where, f"{what}: {value!r}: prefix length must be 0-{width}")
    net = netaddr.IPNetwork(f"{ip}/{int(prefix)}")
    return text if net.ip == net.network else str(net.cidr)


def cidr_list(value: object, where: str, what: str) -> list[str]:
    """Comma-separated CIDRs (dual-stack flags), a YAML list of them, or a mix."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DetectError(where, f"{what}: {item!r} is not a CIDR (ADDRESS/PREFIX)")
        out.extend(cidr(word, where, what) for word in item.split(",") if word.strip())
    if not out:
        raise DetectError(where, f"{what}: empty")
    return out


def yaml_documents(text: str, where: str) -> list[Any]:
    try:
        yaml = importlib.import_module("yaml")  # PyYAML (Debian: python3-yaml)
    except ImportError:
        raise DetectError(where, "cannot parse YAML: PyYAML (python3-yaml) is missing") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as e:
        raise DetectError(where, f"not valid YAML: {e}") from None


def yaml_mapping(text: str, where: str) -> dict[str, Any]:
    """A single-document YAML file whose top level is a mapping (empty file: {})."""
    docs = [d for d in yaml_documents(text, where) if d is not None]
    if not docs:
        return {}
    if len(docs) > 1:
        raise DetectError(where, f"{len(docs)} YAML documents, expected one")
    if not isinstance(docs[0], dict):
        raise DetectError(where, f"top level is a {type_name(docs[0])}, expected a mapping")
    return docs[0]


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DetectError(where, f"not valid JSON: {e}") from None


def type_name(value: object) -> str:
    for kind, name in ((dict, "mapping"), (list, "list"), (str, "string")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def flag(args: Iterable[str], name: str) -> str | None:
    """The last value of --name=value or --name value in an argument list."""
    value = None
    words = list(args)
    for i, word in enumerate(words):
        if word.startswith(f"--{name}="):
            value = word.split("=", 1)[1]
        elif word == f"--{name}" and i + 1 < len(words):
            value = words[i + 1]
    return value


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines (optionally `export`ed and quoted), comments skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").strip().partition("=")
        if eq:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[key.strip()] = value
    return out


def interface(name: object, where: str, what: str) -> str | None:
    """A bridge name from an engine or libvirt, checked before anything relies on it."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not IFNAME.fullmatch(name):
        raise DetectError(where, f"{what}: {name!r} is not an interface name")
    return name
