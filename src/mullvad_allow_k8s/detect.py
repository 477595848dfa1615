"""The running machine's cluster ranges, read from the machine itself (issue 12).

Each distribution has one small reader that looks where that distribution keeps its
address plan on the host: static Pod manifests, config files with their drop-ins,
snap argument files, and the container engines' and libvirt's own CLIs (JSON / XML
output). Nothing here talks to a network service or to a cluster's API.

`detect` never raises for what it reads: a missing file or program means "not there";
a present but broken one becomes a `DetectError` (one line: which file or command and
what is wrong), and the other readers still run. Within one file nothing is trusted
once any of it is broken, and a broken config file also withholds the distribution's
defaults (they would be a guess).

The result is plain data for the settings layer (`auto`), `settings` and `doctor`:
every `Found` says where it was read, so users can check it. The same range may come
from several sources (config and what runs); ranges are reported as found, neither
merged nor checked against Mullvad's own ranges: that is the settings layer's job.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree

import netaddr

from .presets import PRESETS
from .settings import IFNAME  # a Linux interface name as the ruleset may use it

Runner = Callable[[Sequence[str]], str | None]

PODS = "pods"
SERVICES = "services"
NODES = "nodes"

# Defaults where a config file is silent: the presets' (presets.py says where each
# distribution defines them); rke2 inherits k3s' flag defaults (docs.rke2.io basic
# network options).
K3S_DEFAULTS = {PODS: PRESETS["k3s"].pod_cidrs[0], SERVICES: PRESETS["k3s"].service_cidrs[0]}
K0S_DEFAULTS = {PODS: PRESETS["k0s"].pod_cidrs[0], SERVICES: PRESETS["k0s"].service_cidrs[0]}
MINIKUBE_POD_DEFAULT = PRESETS["minikube-none"].pod_cidrs[0]
MINIKUBE_SERVICE_DEFAULT = PRESETS["minikube-none"].service_cidrs[0]
MINIKUBE_NONE_BRIDGE = "bridge"  # minikube's bridge CNI names its interface "bridge"
K3S_BRIDGE = "cni0"  # flannel's CNI bridge in k3s
K0S_KUBE_ROUTER_BRIDGE = "kube-bridge"  # kube-router, k0s' default network provider
DOCKER_BRIDGE_OPTION = "com.docker.network.bridge.name"
COMMAND_TIMEOUT = 10.0
# Docker's and Podman's network names (and minikube's profile names): never an option.
ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Found(NamedTuple):
    """One range the machine uses for a cluster, with where it was read."""

    distribution: str  # kubeadm | k3s | rke2 | microk8s | k0s | kind | minikube | k3d
    kind: str  # pods | services | nodes (a container/VM node network the host sees)
    network: str  # a CIDR as written, e.g. "10.42.0.0/16"
    interface: str | None  # the host bridge it lives on, where known
    source: str  # e.g. "/etc/kubernetes/manifests/kube-apiserver.yaml: --cluster-cidr"


class DetectError(Exception):
    """A present but unusable file or engine answer; str() is one line naming it."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = " ".join(problem.split())
        self.distribution = ""  # whose reader met it (set by detect)
        super().__init__(f"{where}: {self.problem}")


def run_command(argv: Sequence[str]) -> str | None:
    """Standard output of a local program, or None when it is missing or fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def detect(
    root: Path = Path("/"),
    run: Runner = run_command,
    env: Mapping[str, str] = os.environ,
) -> tuple[list[Found], list[DetectError]]:
    """Every cluster range this machine shows, and every broken file met on the way."""
    host = _Host(root, run, env)
    found: list[Found] = []
    for reader in READERS:
        before = len(host.errors)
        found.extend(reader(host))
        for error in host.errors[before:]:
            error.distribution = reader.__name__.lstrip("_")
    return found, host.errors


# ---------------------------------------------------------------------------------------
# The machine, as the readers see it


class _Host:
    """Files under `root`, the engines' CLIs (each command run once), the environment."""

    def __init__(self, root: Path, run: Runner, env: Mapping[str, str]) -> None:
        self.root = root
        self._run = run
        self.env = env
        self.errors: list[DetectError] = []
        self._outputs: dict[tuple[str, ...], str | None] = {}

    def path(self, name: str) -> Path:
        return self.root / name.lstrip("/")

    def show(self, path: Path) -> str:
        """The machine's own name for a path under root."""
        try:
            relative = str(path.relative_to(self.root))
        except ValueError:
            return str(path)
        return "/" if relative == "." else "/" + relative

    def exists(self, *names: str) -> bool:
        return any(os.path.lexists(self.path(n)) for n in names)

    def read(self, path: Path) -> str | None:
        """A file's text; None when it does not exist (an unreadable one raises)."""
        try:
            return path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise DetectError(self.show(path), f"cannot read: {_reason(e)}") from None

    def run(self, *argv: str) -> str | None:
        if argv not in self._outputs:
            self._outputs[argv] = self._run(argv)
        return self._outputs[argv]

    def guard(self, read: Callable[[], list[Found]]) -> list[Found] | None:
        """Run one reader step; a DetectError is recorded and gives None."""
        try:
            return read()
        except DetectError as e:
            self.errors.append(e)
            return None


def _reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


# ---------------------------------------------------------------------------------------
# Parsing helpers


def _cidr(value: object, where: str, what: str) -> str:
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


def _cidr_list(value: object, where: str, what: str) -> list[str]:
    """Comma-separated CIDRs (dual-stack flags), a YAML list of them, or a mix."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DetectError(where, f"{what}: {item!r} is not a CIDR (ADDRESS/PREFIX)")
        out.extend(_cidr(word, where, what) for word in item.split(",") if word.strip())
    if not out:
        raise DetectError(where, f"{what}: empty")
    return out


def _yaml_documents(text: str, where: str) -> list[Any]:
    try:
        yaml = importlib.import_module("yaml")  # PyYAML (Debian: python3-yaml)
    except ImportError:
        raise DetectError(where, "cannot parse YAML: PyYAML (python3-yaml) is missing") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as e:
        raise DetectError(where, f"not valid YAML: {e}") from None


def _yaml_mapping(text: str, where: str) -> dict[str, Any]:
    """A single-document YAML file whose top level is a mapping (empty file: {})."""
    docs = [d for d in _yaml_documents(text, where) if d is not None]
    if not docs:
        return {}
    if len(docs) > 1:
        raise DetectError(where, f"{len(docs)} YAML documents, expected one")
    if not isinstance(docs[0], dict):
        raise DetectError(where, f"top level is a {_type(docs[0])}, expected a mapping")
    return docs[0]


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DetectError(where, f"not valid JSON: {e}") from None


def _type(value: object) -> str:
    for kind, name in ((dict, "mapping"), (list, "list"), (str, "string")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _flag(args: Iterable[str], name: str) -> str | None:
    """The last value of --name=value or --name value in an argument list."""
    value = None
    words = list(args)
    for i, word in enumerate(words):
        if word.startswith(f"--{name}="):
            value = word.split("=", 1)[1]
        elif word == f"--{name}" and i + 1 < len(words):
            value = words[i + 1]
    return value


def _env_file(text: str) -> dict[str, str]:
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


# ---------------------------------------------------------------------------------------
# kubeadm: the static Pod manifests kubeadm writes for the control plane


KUBEADM_MANIFESTS = "/etc/kubernetes/manifests"


def _manifest_args(host: _Host, path: Path, binary: str) -> list[str] | None:
    """command + args of the `binary` container of a static Pod manifest."""
    text = host.read(path)
    if text is None:
        return None
    where = host.show(path)
    pod = _yaml_mapping(text, where)
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list):
        raise DetectError(where, "no spec.containers list (not a Pod manifest)")
    for container in containers:
        if not isinstance(container, dict):
            continue
        command, args = container.get("command") or [], container.get("args") or []
        if not isinstance(command, list) or not isinstance(args, list):
            raise DetectError(where, "spec.containers[].command/args: not a list of strings")
        words = [*command, *args]
        if not all(isinstance(w, str) for w in words):
            raise DetectError(where, "spec.containers[].command/args: not a list of strings")
        if container.get("name") == binary or (words and Path(words[0]).name == binary):
            return [str(w) for w in words]
    raise DetectError(where, f"no {binary} container in spec.containers")


def _manifest_ranges(
    host: _Host,
    distribution: str,
    directory: str,
    wanted: Sequence[tuple[str, str, str]],  # (manifest file, flag, kind)
    interface: str | None = None,
) -> list[Found]:
    found: list[Found] = []
    for name, flag, kind in wanted:

        def read(name: str = name, flag: str = flag, kind: str = kind) -> list[Found]:
            path = host.path(f"{directory}/{name}.yaml")
            args = _manifest_args(host, path, name)
            value = _flag(args or [], flag)
            if value is None:
                return []
            where = host.show(path)
            iface = interface if kind == PODS else None
            return [
                Found(distribution, kind, net, iface, f"{where}: --{flag}")
                for net in _cidr_list(value, where, f"--{flag}")
            ]

        found.extend(host.guard(read) or [])
    return found


def _kubeadm(host: _Host) -> list[Found]:
    """--service-cluster-ip-range always; --cluster-cidr only when podSubnet was set."""
    return _manifest_ranges(
        host,
        "kubeadm",
        KUBEADM_MANIFESTS,
        (
            ("kube-apiserver", "service-cluster-ip-range", SERVICES),
            ("kube-controller-manager", "cluster-cidr", PODS),
        ),
    )


# ---------------------------------------------------------------------------------------
# k3s and rke2: config.yaml + config.yaml.d/*.yaml, their defaults, flannel's files


class _RancherConfig(NamedTuple):
    values: dict[str, Any]
    sources: dict[str, list[str]]  # key -> files it came from (several when appended)


def _rancher_config(host: _Host, base: str) -> _RancherConfig | None:
    """k3s' merge of config.yaml and config.yaml.d/*.yaml (lexical order).

    As k3s' pkg/configfilearg does it: later files replace a key, a key written with
    a trailing + appends to what earlier files gave (strings become one-item lists).
    None when neither the file nor any drop-in exists.
    """
    main = host.path(base)
    dropin_dir = host.path(base + ".d")
    files: list[Path] = []
    if os.path.lexists(main) and not main.is_dir():
        files.append(main)
    if dropin_dir.is_dir():
        try:
            names = sorted(p.name for p in dropin_dir.iterdir())
        except OSError as e:
            raise DetectError(host.show(dropin_dir), f"cannot list: {_reason(e)}") from None
        files.extend(
            dropin_dir / n
            for n in names
            if n.lower().endswith((".yaml", ".yml")) and not (dropin_dir / n).is_dir()
        )
    if not files:
        return None
    values: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}
    for path in files:
        where = host.show(path)
        text = host.read(path)
        for raw_key, value in _yaml_mapping(text or "", where).items():
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
    merged = _rancher_config(_Host(root, run_command, {}), config)
    return None if merged is None else merged.values


def _to_slice(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    text = "" if value is None else str(value).strip()
    return [text] if text else []


def _systemd_exec_args(host: _Host, unit: str) -> tuple[list[str], str] | None:
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
    host: _Host,
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
        conf = _json(text, where)
        if not isinstance(conf, dict):
            raise DetectError(where, f"top level is a {_type(conf)}, expected an object")
        out: list[Found] = []
        if conf.get("Network") and conf.get("EnableIPv4", True) is not False:
            out.append(
                Found(
                    distribution,
                    PODS,
                    _cidr(conf["Network"], where, "Network"),
                    interface,
                    f"{where}: Network",
                )
            )
        if conf.get("IPv6Network") and conf.get("EnableIPv6") is True:
            out.append(
                Found(
                    distribution,
                    PODS,
                    _cidr(conf["IPv6Network"], where, "IPv6Network"),
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
        env = _env_file(text)
        return [
            Found(distribution, PODS, _cidr(env[key], where, key), interface, f"{where}: {key}")
            for key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
            if env.get(key)
        ]

    for step in (from_net_conf, from_subnet_env):
        found.extend(host.guard(step) or [])
    return found


def _rancher(
    host: _Host,
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
                    for net in _cidr_list(merged.values[key], files[-1], key)
                )
        return out

    def from_unit() -> list[Found]:
        split = _systemd_exec_args(host, unit) if unit else None
        if split is None:
            return []
        args, where = split
        out: list[Found] = []
        for kind, key in keys.items():
            value = _flag(args, key)
            if value is not None:
                out.extend(
                    Found(distribution, kind, net, None, f"{where}: ExecStart --{key}")
                    for net in _cidr_list(value, where, f"--{key}")
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


def _k3s(host: _Host) -> list[Found]:
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


def _rke2(host: _Host) -> list[Found]:
    installed = ("/usr/local/bin/rke2", "/usr/bin/rke2", "/var/lib/rancher/rke2")

    def effective() -> list[Found]:
        found = _manifest_ranges(
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


# ---------------------------------------------------------------------------------------
# MicroK8s: the snap's argument files and the CNI environment


MICROK8S_ARGS = "/var/snap/microk8s/current/args"


def _microk8s(host: _Host) -> list[Found]:
    found: list[Found] = []
    for name, flag, kind in (
        ("kube-proxy", "cluster-cidr", PODS),
        ("kube-apiserver", "service-cluster-ip-range", SERVICES),
    ):

        def read(name: str = name, flag: str = flag, kind: str = kind) -> list[Found]:
            path = host.path(f"{MICROK8S_ARGS}/{name}")
            text = host.read(path)
            if text is None:
                return []
            where = host.show(path)
            try:
                args = shlex.split(text, comments=True)
            except ValueError as e:
                raise DetectError(where, f"cannot split arguments: {e}") from None
            value = _flag(args, flag)
            if value is None:
                return []
            return [
                Found("microk8s", kind, net, None, f"{where}: --{flag}")
                for net in _cidr_list(value, where, f"--{flag}")
            ]

        found.extend(host.guard(read) or [])

    def cni_env() -> list[Found]:
        path = host.path(f"{MICROK8S_ARGS}/cni-env")
        text = host.read(path)
        if text is None:
            return []
        where = host.show(path)
        env = _env_file(text)
        out: list[Found] = []
        for family in ("IPv4", "IPv6"):
            if env.get(f"{family}_SUPPORT", "true").lower() == "false":
                continue
            for kind, what in ((PODS, "CLUSTER"), (SERVICES, "SERVICE")):
                key = f"{family}_{what}_CIDR"
                if env.get(key):
                    out.append(
                        Found(
                            "microk8s", kind, _cidr(env[key], where, key), None, f"{where}: {key}"
                        )
                    )
        return out

    found.extend(host.guard(cni_env) or [])
    return found


# ---------------------------------------------------------------------------------------
# k0s: /etc/k0s/k0s.yaml (optional) and k0s' defaults


def _k0s(host: _Host) -> list[Found]:
    config = "/etc/k0s/k0s.yaml"
    installed = ("/usr/local/bin/k0s", "/usr/bin/k0s", "/var/lib/k0s")

    def read() -> list[Found] | None:
        path = host.path(config)
        text = host.read(path)
        if text is None:
            return None
        where = host.show(path)
        docs = [d for d in _yaml_documents(text, where) if d is not None]
        clusters = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ClusterConfig"]
        if not clusters:
            if docs and not all(isinstance(d, dict) for d in docs):
                raise DetectError(where, "top level is not a mapping")
            clusters = [d for d in docs if isinstance(d, dict)] or [{}]
        spec = clusters[0].get("spec") or {}
        if not isinstance(spec, dict):
            raise DetectError(where, f"spec is a {_type(spec)}, expected a mapping")
        network = spec.get("network") or {}
        if not isinstance(network, dict):
            raise DetectError(where, f"spec.network is a {_type(network)}, expected a mapping")
        provider = str(network.get("provider") or "kuberouter").replace("-", "").lower()
        bridge = K0S_KUBE_ROUTER_BRIDGE if provider == "kuberouter" else None
        out: list[Found] = []
        for kind, key in ((PODS, "podCIDR"), (SERVICES, "serviceCIDR")):
            iface = bridge if kind == PODS else None
            if network.get(key):
                out.append(
                    Found(
                        "k0s",
                        kind,
                        _cidr(network[key], where, f"spec.network.{key}"),
                        iface,
                        f"{where}: spec.network.{key}",
                    )
                )
            else:
                out.append(
                    Found(
                        "k0s",
                        kind,
                        K0S_DEFAULTS[kind],
                        iface,
                        f"k0s default (no spec.network.{key} in {where})",
                    )
                )
        dual = network.get("dualStack") or {}
        if not isinstance(dual, dict):
            raise DetectError(where, "spec.network.dualStack is not a mapping")
        if dual.get("enabled") is True:
            for kind, key in ((PODS, "IPv6podCIDR"), (SERVICES, "IPv6serviceCIDR")):
                if dual.get(key):
                    what = f"spec.network.dualStack.{key}"
                    out.append(
                        Found(
                            "k0s",
                            kind,
                            _cidr(dual[key], where, what),
                            bridge if kind == PODS else None,
                            f"{where}: {what}",
                        )
                    )
        return out

    try:
        found = read()
    except DetectError as e:
        host.errors.append(e)
        return []
    if found is not None:
        return found
    if not host.exists(*installed):
        return []
    return [
        Found(
            "k0s",
            kind,
            K0S_DEFAULTS[kind],
            K0S_KUBE_ROUTER_BRIDGE if kind == PODS else None,
            f"k0s default (k0s installed, no {config})",
        )
        for kind in (PODS, SERVICES)
    ]


# ---------------------------------------------------------------------------------------
# Container engines: Docker and Podman networks, through their own CLIs


class _EngineNetwork(NamedTuple):
    name: str
    subnets: list[tuple[str, str]]  # (CIDR, the field it was read from)
    interface: str | None
    labels: dict[str, str]


def _docker_network(item: object, where: str) -> _EngineNetwork:
    """One object of `docker network inspect` (moby's api/types/network Inspect)."""
    if not isinstance(item, dict):
        raise DetectError(where, f"a {_type(item)} where a network object belongs")
    name = str(item.get("Name") or "")
    options = item.get("Options") or {}
    ident = str(item.get("Id") or item.get("ID") or "")
    interface: str | None = None
    if isinstance(options, dict) and options.get(DOCKER_BRIDGE_OPTION):
        interface = _interface(options[DOCKER_BRIDGE_OPTION], where, DOCKER_BRIDGE_OPTION)
    elif item.get("Driver", "bridge") == "bridge" and len(ident) >= 12:
        interface = _interface("br-" + ident[:12], where, "Id")  # libnetwork's bridge name
    ipam = item.get("IPAM") or {}
    configs = ipam.get("Config") if isinstance(ipam, dict) else None
    subnets: list[tuple[str, str]] = []
    for i, conf in enumerate(configs or []):
        if isinstance(conf, dict) and conf.get("Subnet"):
            field = f"IPAM.Config[{i}].Subnet"
            subnets.append((_cidr(conf["Subnet"], where, f"{name}: {field}"), field))
    labels = item.get("Labels") or {}
    return _EngineNetwork(name, subnets, interface, _labels(labels))


def _podman_network(item: object, where: str) -> _EngineNetwork:
    """One object of `podman network inspect`: netavark's format (Podman 4+, either
    backend) or, from Podman 3, the CNI conflist itself."""
    if not isinstance(item, dict):
        raise DetectError(where, f"a {_type(item)} where a network object belongs")
    name = str(item.get("name") or "")
    subnets: list[tuple[str, str]] = []
    interface: str | None = None
    labels: dict[str, str] = _labels(item.get("labels") or {})
    if "plugins" in item:  # CNI conflist (Podman 3)
        for p, plugin in enumerate(item.get("plugins") or []):
            if not isinstance(plugin, dict) or plugin.get("type") != "bridge":
                continue
            interface = _interface(plugin.get("bridge"), where, f"plugins[{p}].bridge")
            ranges = (plugin.get("ipam") or {}).get("ranges") or []
            for r, range_set in enumerate(ranges):
                for s, entry in enumerate(range_set if isinstance(range_set, list) else []):
                    if isinstance(entry, dict) and entry.get("subnet"):
                        field = f"plugins[{p}].ipam.ranges[{r}][{s}].subnet"
                        subnets.append((_cidr(entry["subnet"], where, f"{name}: {field}"), field))
        args = item.get("args") or {}
        if isinstance(args, dict):
            labels = _labels(args.get("podman_labels") or {})
    else:
        interface = _interface(item.get("network_interface"), where, "network_interface")
        for i, entry in enumerate(item.get("subnets") or []):
            if isinstance(entry, dict) and entry.get("subnet"):
                field = f"subnets[{i}].subnet"
                subnets.append((_cidr(entry["subnet"], where, f"{name}: {field}"), field))
    return _EngineNetwork(name, subnets, interface, labels)


def _interface(name: object, where: str, what: str) -> str | None:
    """A bridge name from an engine or libvirt, checked before anything relies on it."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not IFNAME.fullmatch(name):
        raise DetectError(where, f"{what}: {name!r} is not an interface name")
    return name


def _engine_names(names: Iterable[str], where: str) -> list[str]:
    out = list(names)
    for name in out:
        if not ENGINE_NAME.fullmatch(name):
            raise DetectError(where, f"{name!r} is not a network name")
    return out


def _labels(value: object) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):  # `docker network ls --format '{{json .}}'`: "a=b,c=d"
        pairs = (p.partition("=") for p in value.split(",") if p)
        return {k: v for k, _, v in pairs}
    return {}


def _inspect(host: _Host, engine: str, names: Sequence[str]) -> list[_EngineNetwork]:
    """`<engine> network inspect NAME...`; [] when the engine or network is missing."""
    if not names:
        return []
    names = _engine_names(names, f"{engine} network inspect")
    argv = (engine, "network", "inspect", *names)
    out = host.run(*argv)
    if out is None or not out.strip():
        return []
    where = " ".join(argv)
    data = _json(out, where)
    items = data if isinstance(data, list) else [data]
    parse = _docker_network if engine == "docker" else _podman_network
    return [parse(item, where) for item in items]


def _network_list(host: _Host, engine: str) -> list[dict[str, str]]:
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
        items = [_json(line, where) for line in out.splitlines() if line.strip()]
    else:
        data = _json(out, where)
        items = data if isinstance(data, list) else [data]
    rows = []
    for item in items:
        if not isinstance(item, dict):
            raise DetectError(where, f"a {_type(item)} where a network object belongs")
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


def _kind(host: _Host) -> list[Found]:
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


def _k3d(host: _Host) -> list[Found]:
    """Networks k3d made: labelled app=k3d, or named k3d-<cluster> (Docker, or Podman
    through its Docker-compatible socket, where Podman's own CLI lists them too)."""
    found: list[Found] = []
    for engine in ("docker", "podman"):

        def read(engine: str = engine) -> list[Found]:
            names = [
                row["name"]
                for row in _network_list(host, engine)
                if row.get("app") == "k3d" or row["name"].startswith("k3d-")
            ]
            return _engine_found("k3d", engine, _inspect(host, engine, names))

        found.extend(host.guard(read) or [])
    return found


# ---------------------------------------------------------------------------------------
# minikube: the profiles' config.json, and the network each driver made


def _minikube_profile_dirs(host: _Host) -> list[Path]:
    """$MINIKUBE_HOME (as minikube's localpath.MiniPath reads it), root's and users'."""
    homes: list[Path] = []
    configured = host.env.get("MINIKUBE_HOME")
    if configured:
        home = host.path(configured)
        homes.append(home if home.name == ".minikube" else home / ".minikube")
    homes.append(host.path("/root/.minikube"))
    users = host.path("/home")
    with contextlib.suppress(OSError):
        homes.extend(sorted(p / ".minikube" for p in users.iterdir() if _is_dir(p)))
    out: list[Path] = []
    for home in homes:
        profiles = home / "profiles"
        if _is_dir(profiles) and profiles not in out:
            out.append(profiles)
    return out


def _is_dir(path: Path) -> bool:
    """False also where the path cannot be looked at: another user's home is not ours to
    read (`generate --check` as a user), and root sees every profile."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _minikube(host: _Host) -> list[Found]:
    found: list[Found] = []
    for profiles in _minikube_profile_dirs(host):
        try:
            entries = sorted(p for p in profiles.iterdir() if p.is_dir())
        except OSError as e:
            host.errors.append(DetectError(host.show(profiles), f"cannot list: {_reason(e)}"))
            continue
        for profile in entries:

            def read(profile: Path = profile) -> list[Found]:
                return _minikube_profile(host, profile)

            found.extend(host.guard(read) or [])
    return found


def _minikube_profile(host: _Host, profile: Path) -> list[Found]:
    path = profile / "config.json"
    text = host.read(path)
    if text is None:
        return []
    where = host.show(path)
    config = _json(text, where)
    if not isinstance(config, dict):
        raise DetectError(where, f"top level is a {_type(config)}, expected an object")
    name = str(config.get("Name") or profile.name)
    driver = str(config.get("Driver") or config.get("VMDriver") or "").lower()
    k8s = config.get("KubernetesConfig") or {}
    if not isinstance(k8s, dict):
        raise DetectError(where, "KubernetesConfig is not an object")

    if driver in ("docker", "podman"):
        network = str(config.get("Network") or name)
        found = _engine_found("minikube", driver, _inspect(host, driver, [network]))
        if found:
            return found
        if config.get("Subnet"):
            return [
                Found(
                    "minikube",
                    NODES,
                    _cidr(config["Subnet"], where, "Subnet"),
                    None,
                    f"{where}: Subnet",
                )
            ]
        return _minikube_node_ips(config, where)
    if driver == "kvm2":
        uri = str(config.get("KVMQemuURI") or "qemu:///system")
        if not re.fullmatch(r"[a-z][a-z0-9+]*://[^\s]*", uri):
            raise DetectError(where, f"KVMQemuURI: {uri!r} is not a libvirt URI")
        libvirt = _engine_names([f"mk-{name}"], where)[0]
        xml = host.run("virsh", "--connect", uri, "net-dumpxml", libvirt)
        if xml is not None and xml.strip():
            return _libvirt_network(xml, f"virsh net-dumpxml {libvirt}")
        return _minikube_node_ips(config, where)
    if driver == "none":
        pods = MINIKUBE_POD_DEFAULT
        pod_source = "minikube default pod-network-cidr (driver none)"
        options = k8s.get("ExtraOptions") or []
        for option in options if isinstance(options, list) else []:
            if (
                isinstance(option, dict)
                and option.get("Component") == "kubeadm"
                and option.get("Key") == "pod-network-cidr"
            ):
                pods = _cidr(option.get("Value"), where, "ExtraOptions kubeadm.pod-network-cidr")
                pod_source = f"{where}: KubernetesConfig.ExtraOptions kubeadm.pod-network-cidr"
        if k8s.get("ServiceCIDR"):
            services = _cidr(k8s["ServiceCIDR"], where, "KubernetesConfig.ServiceCIDR")
            service_source = f"{where}: KubernetesConfig.ServiceCIDR"
        else:
            services = MINIKUBE_SERVICE_DEFAULT
            service_source = "minikube default service-cluster-ip-range (driver none)"
        return [
            Found("minikube", PODS, pods, MINIKUBE_NONE_BRIDGE, pod_source),
            Found("minikube", SERVICES, services, None, service_source),
        ]
    return []  # virtualbox, qemu2, ssh ...: not read (yet)


def _minikube_node_ips(config: dict[str, Any], where: str) -> list[Found]:
    """Last resort when the node network cannot be inspected: the nodes themselves."""
    found = []
    nodes = config.get("Nodes") or []
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        if isinstance(node, dict) and node.get("IP"):
            ip = str(node["IP"])
            width = 128 if ":" in ip else 32
            found.append(
                Found(
                    "minikube",
                    NODES,
                    _cidr(f"{ip}/{width}", where, f"Nodes[{i}].IP"),
                    None,
                    f"{where}: Nodes[{i}].IP",
                )
            )
    return found


def _libvirt_network(xml: str, where: str) -> list[Found]:
    """libvirt's network XML: <bridge name=.../> and its <ip> elements (v4 and v6)."""
    try:
        network = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise DetectError(where, f"not valid XML: {e}") from None
    if network.tag != "network":
        raise DetectError(where, f"root element <{network.tag}>, expected <network>")
    name = network.findtext("name") or ""
    bridge = network.find("bridge")
    interface = _interface(bridge.get("name") if bridge is not None else None, where, "<bridge>")
    found = []
    for i, ip in enumerate(network.findall("ip")):
        address = ip.get("address")
        if not address:
            continue
        prefix = ip.get("prefix")
        netmask = ip.get("netmask")
        what = f"{name} <ip> #{i + 1}"
        if prefix is None and netmask is not None:
            try:
                prefix = str(netaddr.IPAddress(netmask).netmask_bits())
            except (netaddr.AddrFormatError, ValueError):
                raise DetectError(where, f"{what}: netmask {netmask!r} is not a netmask") from None
        if prefix is None:  # libvirt's defaults: /24 for IPv4, /64 for IPv6
            prefix = "64" if ":" in address else "24"
        found.append(
            Found(
                "minikube",
                NODES,
                _cidr(f"{address}/{prefix}", where, what),
                interface,
                f"{where}: <ip address='{address}'>",
            )
        )
    return found


READERS: tuple[Callable[[_Host], list[Found]], ...] = (
    _kubeadm,
    _k3s,
    _rke2,
    _microk8s,
    _k0s,
    _kind,
    _minikube,
    _k3d,
)
