"""Container engines: the Docker and Podman networks that kind, k3d and minikube make,
asked of root's engines through their own CLIs (boundary.py runs them).

kind's network is named `kind` (or what KIND_EXPERIMENTAL_{DOCKER,PODMAN}_NETWORK in
root's environment says), k3d's carry the label app=k3d or the name k3d-<cluster>,
minikube's the labels minikube sets on every network it makes
(pkg/drivers/kic/oci/network_create.go: created_by.minikube.sigs.k8s.io=true,
name.minikube.sigs.k8s.io=<profile>). No user's file is read: a minikube profile in a
home directory says nothing root acts on. Networks are root's (rootful Podman) or the
Docker daemon's, whose users are root's equals (docs.docker.com "Docker daemon attack
surface"); rootless engines' networks are never seen here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from .boundary import NAME
from .host import NODES, DetectError, Found, Host
from .parse import cidr, interface, parse_json, type_name

DOCKER_BRIDGE_OPTION = "com.docker.network.bridge.name"
MINIKUBE_CREATED_BY = "created_by.minikube.sigs.k8s.io"
MINIKUBE_PROFILE = "name.minikube.sigs.k8s.io"


class _EngineNetwork(NamedTuple):
    name: str
    subnets: list[tuple[str, str]]  # (CIDR, the field it was read from)
    interface: str | None
    labels: dict[str, str]


def _docker_network(item: object, where: str) -> _EngineNetwork:
    """One object of `docker network inspect` (moby's api/types/network Inspect)."""
    if not isinstance(item, dict):
        raise DetectError(where, f"a {type_name(item)} where a network object belongs")
    name = str(item.get("Name") or "")
    options = item.get("Options") or {}
    ident = str(item.get("Id") or item.get("ID") or "")
    bridge: str | None = None
    if isinstance(options, dict) and options.get(DOCKER_BRIDGE_OPTION):
        bridge = interface(options[DOCKER_BRIDGE_OPTION], where, DOCKER_BRIDGE_OPTION)
    elif item.get("Driver", "bridge") == "bridge" and len(ident) >= 12:
        bridge = interface("br-" + ident[:12], where, "Id")  # libnetwork's bridge name
    ipam = item.get("IPAM") or {}
    configs = ipam.get("Config") if isinstance(ipam, dict) else None
    subnets: list[tuple[str, str]] = []
    for i, conf in enumerate(configs or []):
        if isinstance(conf, dict) and conf.get("Subnet"):
            field = f"IPAM.Config[{i}].Subnet"
            subnets.append((cidr(conf["Subnet"], where, f"{name}: {field}"), field))
    labels = item.get("Labels") or {}
    return _EngineNetwork(name, subnets, bridge, _labels(labels))


def _podman_network(item: object, where: str) -> _EngineNetwork:
    """One object of `podman network inspect`: netavark's format (Podman 4+, either
    backend) or, from Podman 3, the CNI conflist itself."""
    if not isinstance(item, dict):
        raise DetectError(where, f"a {type_name(item)} where a network object belongs")
    name = str(item.get("name") or "")
    subnets: list[tuple[str, str]] = []
    bridge: str | None = None
    labels: dict[str, str] = _labels(item.get("labels") or {})
    if "plugins" in item:  # CNI conflist (Podman 3)
        for p, plugin in enumerate(item.get("plugins") or []):
            if not isinstance(plugin, dict) or plugin.get("type") != "bridge":
                continue
            bridge = interface(plugin.get("bridge"), where, f"plugins[{p}].bridge")
            ranges = (plugin.get("ipam") or {}).get("ranges") or []
            for r, range_set in enumerate(ranges):
                for s, entry in enumerate(range_set if isinstance(range_set, list) else []):
                    if isinstance(entry, dict) and entry.get("subnet"):
                        field = f"plugins[{p}].ipam.ranges[{r}][{s}].subnet"
                        subnets.append((cidr(entry["subnet"], where, f"{name}: {field}"), field))
        args = item.get("args") or {}
        if isinstance(args, dict):
            labels = _labels(args.get("podman_labels") or {})
    else:
        bridge = interface(item.get("network_interface"), where, "network_interface")
        for i, entry in enumerate(item.get("subnets") or []):
            if isinstance(entry, dict) and entry.get("subnet"):
                field = f"subnets[{i}].subnet"
                subnets.append((cidr(entry["subnet"], where, f"{name}: {field}"), field))
    return _EngineNetwork(name, subnets, bridge, labels)


def _labels(value: object) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):  # `docker network ls --format '{{json .}}'`: "a=b,c=d"
        pairs = (p.partition("=") for p in value.split(",") if p)
        return {k: v for k, _, v in pairs}
    return {}


def _names(host: Host, engine: str, names: Sequence[str]) -> list[str]:
    """The names that may be an argument; each other one is ignored, and said."""
    good = []
    for name in names:
        if NAME.fullmatch(name):
            good.append(name)
        else:
            problem = f"ignored: {name!r} is not a network name"
            host.errors.append(DetectError(f"{engine} network ls", problem, fatal=False))
    return good


def _inspect(host: Host, engine: str, names: Sequence[str]) -> list[_EngineNetwork]:
    """`<engine> network inspect NAME...`; [] when the engine or network is missing."""
    names = _names(host, engine, names)
    if not names:
        return []
    argv = (engine, "network", "inspect", *names)
    out = host.run(*argv)
    if out is None or not out.strip():
        return []
    where = " ".join(argv)
    data = parse_json(out, where)
    items = data if isinstance(data, list) else [data]
    parse = _docker_network if engine == "docker" else _podman_network
    return [parse(item, where) for item in items]


def _network_list(host: Host, engine: str) -> list[dict[str, str]]:
    """Name and labels of every network (Docker: JSON lines; Podman: one JSON array)."""
    if engine == "docker":
        argv: tuple[str, ...] = ("docker", "network", "ls", "--no-trunc", "--format", "{{json .}}")
    else:
        argv = ("podman", "network", "ls", "--format", "json")
    out = host.run(*argv)
    if out is None or not out.strip():
        return []
    where = " ".join(argv[:3])
    if engine == "docker":
        items = [parse_json(line, where) for line in out.splitlines() if line.strip()]
    else:
        data = parse_json(out, where)
        items = data if isinstance(data, list) else [data]
    rows = []
    for item in items:
        if not isinstance(item, dict):
            raise DetectError(where, f"a {type_name(item)} where a network object belongs")
        name = item.get("Name") or item.get("name") or ""
        rows.append({"name": str(name), **_labels(item.get("Labels") or item.get("labels") or {})})
    return rows


def _engine_found(
    distribution: str, engine: str, networks: Iterable[_EngineNetwork]
) -> list[Found]:
    return [
        Found(
            distribution,
            NODES,
            cidr,
            net.interface,
            f"{engine} network inspect {net.name}: {field}",
        )
        for net in networks
        for cidr, field in net.subnets
    ]


def kind(host: Host) -> list[Found]:
    """The network kind puts its node containers on (`kind`, or the env override)."""
    found: list[Found] = []
    for engine, variable in (
        ("docker", "KIND_EXPERIMENTAL_DOCKER_NETWORK"),
        ("podman", "KIND_EXPERIMENTAL_PODMAN_NETWORK"),
    ):
        name = host.env.get(variable) or "kind"

        def read(engine: str = engine, name: str = name) -> list[Found]:
            return _engine_found("kind", engine, _inspect(host, engine, [name]))

        found.extend(host.guard(read) or [])
    return found


def _listed(
    host: Host, distribution: str, made_by: Callable[[dict[str, str]], bool]
) -> list[Found]:
    """The networks of both engines' listings that `made_by` says the tool made."""
    found: list[Found] = []
    for engine in ("docker", "podman"):

        def read(engine: str = engine) -> list[Found]:
            names = [row["name"] for row in _network_list(host, engine) if made_by(row)]
            return _engine_found(distribution, engine, _inspect(host, engine, names))

        found.extend(host.guard(read) or [])
    return found


def k3d(host: Host) -> list[Found]:
    """Networks k3d made: labelled app=k3d, or named k3d-<cluster> (Docker, or Podman
    through its Docker-compatible socket, where Podman's own CLI lists them too)."""
    return _listed(
        host, "k3d", lambda row: row.get("app") == "k3d" or row["name"].startswith("k3d-")
    )


def minikube(host: Host) -> list[Found]:
    """Networks minikube's docker and podman drivers made, found by minikube's labels."""
    return _listed(host, "minikube", lambda row: row.get(MINIKUBE_CREATED_BY) == "true")
