"""kubeadm (and minikube's none driver, which is kubeadm on this machine): the static
Pod manifests kubeadm writes for the control plane, root's files under /etc."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .host import PODS, SERVICES, DetectError, Found, Host
from .parse import cidr_list, flag, type_name, yaml_mapping

KUBEADM_MANIFESTS = "/etc/kubernetes/manifests"
# minikube's none driver runs kubeadm with certificatesDir /var/lib/minikube/certs
# (pkg/minikube/vmpath GuestKubernetesCertsDir): its API server's flags name that
# directory, which only root can have written. Its bridge CNI calls its bridge "bridge".
MINIKUBE_CERTS = "/var/lib/minikube/"
MINIKUBE_NONE_BRIDGE = "bridge"


def manifest_args(host: Host, path: Path, binary: str) -> list[str] | None:
    """command + args of the `binary` container of a static Pod manifest."""
    text = host.read(path)
    if text is None:
        return None
    where = host.show(path)
    pod = yaml_mapping(text, where)
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


def manifest_ranges(
    host: Host,
    distribution: str,
    directory: str,
    wanted: Sequence[tuple[str, str, str]],  # (manifest file, flag, kind)
    interface: str | None = None,
) -> list[Found]:
    found: list[Found] = []
    for name, option, kind in wanted:

        def read(name: str = name, option: str = option, kind: str = kind) -> list[Found]:
            path = host.path(f"{directory}/{name}.yaml")
            args = manifest_args(host, path, name)
            value = flag(args or [], option)
            if value is None:
                return []
            where = host.show(path)
            iface = interface if kind == PODS else None
            return [
                Found(distribution, kind, net, iface, f"{where}: --{option}")
                for net in cidr_list(value, where, f"--{option}")
            ]

        found.extend(host.guard(read) or [])
    return found


def _is_minikube(host: Host) -> bool:
    """Whether kubeadm's API server is minikube's (driver none)."""
    try:
        args = manifest_args(
            host, host.path(f"{KUBEADM_MANIFESTS}/kube-apiserver.yaml"), "kube-apiserver"
        )
    except DetectError:
        return False  # reported by the reader itself
    ca = flag(args or [], "client-ca-file") or ""
    return ca.startswith(MINIKUBE_CERTS)


def kubeadm(host: Host) -> list[Found]:
    """--service-cluster-ip-range always; --cluster-cidr only when podSubnet was set."""
    minikube = _is_minikube(host)
    return manifest_ranges(
        host,
        "minikube" if minikube else "kubeadm",
        KUBEADM_MANIFESTS,
        (
            ("kube-apiserver", "service-cluster-ip-range", SERVICES),
            ("kube-controller-manager", "cluster-cidr", PODS),
        ),
        MINIKUBE_NONE_BRIDGE if minikube else None,
    )


__all__ = ["kubeadm", "manifest_args", "manifest_ranges", "type_name"]
