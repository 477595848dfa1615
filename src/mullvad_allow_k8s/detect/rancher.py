"""k3s and rke2: config.yaml + config.yaml.d/*.yaml, the unit's flags, what runs
(flannel's files, rke2's static Pods) and the distributions' defaults, all root's files."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..presets import PRESETS
from .host import PODS, SERVICES, DetectError, Found, Host, run_command
from .kubeadm import manifest_ranges
from .parse import cidr, cidr_list, env_file, flag, parse_json, type_name, yaml_mapping

# Defaults where a config file is silent: the presets' (presets.py says where each
# distribution defines them); rke2 inherits k3s' flag defaults (docs.rke2.io basic
# network options).
K3S_DEFAULTS = {PODS: PRESETS["k3s"].pod_cidrs[0], SERVICES: PRESETS["k3s"].service_cidrs[0]}
K3S_BRIDGE = "cni0"  # flannel's CNI bridge in k3s


class _RancherConfig(NamedTuple):
    values: dict[str, Any]
    sources: dict[str, list[str]]  # key -> files it came from (several when appended)


def _rancher_config(host: Host, base: str) -> _RancherConfig | None:
    """k3s' merge of config.yaml and config.yaml.d/*.yaml (lexical order).

    As k3s' pkg/configfilearg does it: later files replace a key, a key written with
    a trailing + appends to what earlier files gave (strings become one-item lists).
    None when neither the file nor any drop-in exists.
    """
    main = host.path(base)
    dropin_dir = host.path(base + ".d")
    files: list[Path] = []
    if host.exists(base) and not host.is_dir(main):
        files.append(main)
    names = host.listdir(dropin_dir) if host.is_dir(dropin_dir) else None
    files.extend(
        dropin_dir / n
        for n in names or []
        if n.lower().endswith((".yaml", ".yml")) and not host.is_dir(dropin_dir / n)
    )
    if not files:
        return None
    values: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}
    for path in files:
        where = host.show(path)
        text = host.read(path)
        for raw_key, value in yaml_mapping(text or "", where).items():
            key = str(raw_key)
            append = key.endswith("+")
            key = key.removesuffix("+")
            if append and key in values:
                values[key] = _to_slice(values[key]) + _to_slice(value)
                sources[key].append(where)
            else:
                values[key] = value
                sources[key] = [where]
    return _RancherConfig(values, sources)


def rancher_config(config: str, root: Path = Path("/")) -> dict[str, Any] | None:
    """k3s' or rke2's merged configuration (e.g. "/etc/rancher/k3s/config.yaml").

    None when neither the file nor a drop-in exists; a broken one raises DetectError.
    """
    merged = _rancher_config(Host(root, run_command, {}), config)
    return None if merged is None else merged.values


def _to_slice(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    text = "" if value is None else str(value).strip()
    return [text] if text else []


def _systemd_exec_args(host: Host, unit: str) -> tuple[list[str], str] | None:
    """The last ExecStart= of a unit file, split into words (None: no such unit)."""
    path = host.path(unit)
    text = host.read(path)
    if text is None:
        return None
    where = host.show(path)
    joined = text.replace("\\\n", " ")
    exec_start = [
        line.split("=", 1)[1]
        for line in joined.splitlines()
        if line.strip().startswith("ExecStart=")
    ]
    if not exec_start or not exec_start[-1].strip():
        return None
    try:
        return shlex.split(exec_start[-1].strip().lstrip("-@:+!")), where
    except ValueError as e:
        raise DetectError(where, f"ExecStart: {e}") from None


def _flannel(
    host: Host,
    distribution: str,
    net_conf: str | None,
    interface: str | None,
    subnet_env: bool,
) -> list[Found]:
    """What flannel runs with: its net-conf.json and the subnet.env it writes.

    /run/flannel/subnet.env is any flannel's (kubeadm + flannel too), so it is only
    read (`subnet_env`) where the distribution is installed.
    """
    found: list[Found] = []

    def from_net_conf() -> list[Found]:
        if net_conf is None:
            return []
        path = host.path(net_conf)
        text = host.read(path)
        if text is None:
            return []
        where = host.show(path)
        conf = parse_json(text, where)
        if not isinstance(conf, dict):
            raise DetectError(where, f"top level is a {type_name(conf)}, expected an object")
        out: list[Found] = []
        if conf.get("Network") and conf.get("EnableIPv4", True) is not False:
            out.append(
                Found(
                    distribution,
                    PODS,
                    cidr(conf["Network"], where, "Network"),
                    interface,
                    f"{where}: Network",
                )
            )
        if conf.get("IPv6Network") and conf.get("EnableIPv6") is True:
            out.append(
                Found(
                    distribution,
                    PODS,
                    cidr(conf["IPv6Network"], where, "IPv6Network"),
                    interface,
                    f"{where}: IPv6Network",
                )
            )
        return out

    def from_subnet_env() -> list[Found]:
        if not subnet_env:
            return []
        path = host.path("/run/flannel/subnet.env")
        text = host.read(path)
        if text is None:
            return []
        where = host.show(path)
        env = env_file(text)
        return [
            Found(distribution, PODS, cidr(env[key], where, key), interface, f"{where}: {key}")
            for key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
            if env.get(key)
        ]

    for step in (from_net_conf, from_subnet_env):
        found.extend(host.guard(step) or [])
    return found


def _rancher(
    host: Host,
    distribution: str,
    *,
    installed: Sequence[str],
    config: str,
    unit: str | None,
    effective: Callable[[], list[Found]],
    pod_interface: Callable[[dict[str, Any]], str | None],
) -> list[Found]:
    """Config (+ drop-ins), flags in the unit (they win), what runs, then defaults.

    A default fills a kind (pods, services) only when nothing else names it, and
    only when the distribution is installed and its config is readable.
    """
    keys = {PODS: "cluster-cidr", SERVICES: "service-cidr"}
    values: dict[str, Any] = {}

    def from_config() -> list[Found]:
        merged = _rancher_config(host, config)
        if merged is None:
            return []
        values.update(merged.values)
        iface = pod_interface(merged.values)
        out: list[Found] = []
        for kind, key in keys.items():
            if key in merged.values:
                files = merged.sources[key]
                out.extend(
                    Found(
                        distribution,
                        kind,
                        net,
                        iface if kind == PODS else None,
                        f"{', '.join(files)}: {key}",
                    )
                    for net in cidr_list(merged.values[key], files[-1], key)
                )
        return out

    def from_unit() -> list[Found]:
        split = _systemd_exec_args(host, unit) if unit else None
        if split is None:
            return []
        args, where = split
        out: list[Found] = []
        for kind, key in keys.items():
            value = flag(args, key)
            if value is not None:
                out.extend(
                    Found(distribution, kind, net, None, f"{where}: ExecStart --{key}")
                    for net in cidr_list(value, where, f"--{key}")
                )
        return out

    configured = host.guard(from_config)
    flags = host.guard(from_unit)
    found = [*(configured or []), *(flags or []), *effective()]
    if configured is None or flags is None or not host.exists(*installed):
        return found
    seen = {f.kind for f in found}
    for kind in (PODS, SERVICES):
        if kind not in seen:
            found.append(
                Found(
                    distribution,
                    kind,
                    K3S_DEFAULTS[kind],
                    pod_interface(values) if kind == PODS else None,
                    f"{distribution} default (no {keys[kind]} in {config} or its drop-ins)",
                )
            )
    return found


def _k3s_pod_interface(values: dict[str, Any]) -> str | None:
    """flannel's cni0, unless flannel is off (flannel-backend: none, another CNI)."""
    backend = values.get("flannel-backend")
    return None if str(backend).lower() == "none" and backend is not None else K3S_BRIDGE


def k3s(host: Host) -> list[Found]:
    installed = ("/usr/local/bin/k3s", "/usr/bin/k3s", "/var/lib/rancher/k3s")
    return _rancher(
        host,
        "k3s",
        installed=installed,
        config="/etc/rancher/k3s/config.yaml",
        unit="/etc/systemd/system/k3s.service",
        effective=lambda: _flannel(
            host,
            "k3s",
            "/var/lib/rancher/k3s/agent/etc/flannel/net-conf.json",
            K3S_BRIDGE,
            subnet_env=host.exists(*installed),
        ),
        pod_interface=_k3s_pod_interface,
    )


def rke2(host: Host) -> list[Found]:
    installed = ("/usr/local/bin/rke2", "/usr/bin/rke2", "/var/lib/rancher/rke2")

    def effective() -> list[Found]:
        found = manifest_ranges(
            host,
            "rke2",
            "/var/lib/rancher/rke2/agent/pod-manifests",
            (
                ("kube-apiserver", "service-cluster-ip-range", SERVICES),
                ("kube-proxy", "cluster-cidr", PODS),
            ),
        )
        # canal's flannel; no bridge of its own (Calico's veths carry the pods)
        found.extend(_flannel(host, "rke2", None, None, subnet_env=host.exists(*installed)))
        return found

    return _rancher(
        host,
        "rke2",
        installed=installed,
        config="/etc/rancher/rke2/config.yaml",
        unit=None,
        effective=effective,
        pod_interface=lambda values: None,  # canal (default), cilium, calico: no one bridge
    )
