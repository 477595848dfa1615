"""The running machine's cluster ranges, read from what root controls (issues 12, 20).

Detection runs as root and decides what a firewall exempts, so it reads only sources
that only root (or a daemon whose users are root's equals) can change:
- root's files: kubeadm's static Pod manifests (/etc/kubernetes/manifests), k3s' and
  rke2's config files and drop-ins (/etc/rancher), their units and flannel's files
  (/etc/systemd, /var/lib/rancher, /run/flannel), MicroK8s' argument files
  (/var/snap/microk8s), /etc/k0s/k0s.yaml; each read through boundary.py (root-owned
  path, regular file, size cap, deadline);
- root's container engines and libvirt, through their CLIs with fixed arguments:
  kind's and k3d's networks by name and label, minikube's by the labels minikube sets
  on them, minikube's kvm2 networks on qemu:///system.
It never reads a user's home (minikube profiles, kubeconfigs): whatever a user writes
there changes nothing the table exempts and runs nothing (tests/kernel/test_hostile_user).

`detect` never raises for what it reads: a missing file or program means "not there";
a present but broken one becomes a `DetectError` (one line: which file or command and
what is wrong), and the other readers still run. Within one file nothing is trusted
once any of it is broken, and a broken config file also withholds the distribution's
defaults (they would be a guess). A source that fails the trust checks is a DetectError
with fatal=False: ignored, with its distribution's defaults, and said by `doctor`.

The result is plain data for the settings layer (`auto`), `settings` and `doctor`:
every `Found` says where it was read, so users can check it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .host import NODES, PODS, SERVICES, DetectError, Found, Host, Runner, run_command

__all__ = [
    "NODES",
    "PODS",
    "SERVICES",
    "DetectError",
    "Found",
    "Runner",
    "detect",
    "rancher_config",
    "run_command",
]

# Names for os.environ keys detection reads (kind's network override), nothing else.
ENVIRONMENT_KEYS = ("KIND_EXPERIMENTAL_DOCKER_NETWORK", "KIND_EXPERIMENTAL_PODMAN_NETWORK")


def readers(engines: bool = True) -> tuple[tuple[str, Callable[[Host], list[Found]]], ...]:
    """(distribution family, reader), in the order their findings are reported; with
    engines=False only the readers of root's files."""
    from .engines import k3d, kind, minikube  # noqa: PLC0415  (start-up time)
    from .k0s import k0s  # noqa: PLC0415
    from .kubeadm import kubeadm  # noqa: PLC0415
    from .libvirt import minikube_kvm2  # noqa: PLC0415
    from .microk8s import microk8s  # noqa: PLC0415
    from .rancher import k3s, rke2  # noqa: PLC0415

    files = (
        ("kubeadm", kubeadm),
        ("k3s", k3s),
        ("rke2", rke2),
        ("microk8s", microk8s),
        ("k0s", k0s),
    )
    asked = (("kind", kind), ("minikube", minikube), ("minikube", minikube_kvm2), ("k3d", k3d))
    return (*files, *asked) if engines else files


def detect(
    root: Path = Path("/"),
    run: Runner = run_command,
    env: Mapping[str, str] = os.environ,
    *,
    engines: bool = True,
) -> tuple[list[Found], list[DetectError]]:
    """Every cluster range this machine shows, and every source met that was unusable
    (engines=False: root's files only, no engine or libvirt asked)."""
    host = Host(root, run, {k: env[k] for k in ENVIRONMENT_KEYS if k in env})
    found: list[Found] = []
    for distribution, reader in readers(engines):
        before = len(host.errors)
        found.extend(reader(host))
        for error in host.errors[before:]:
            error.distribution = distribution
    return found, host.errors


def rancher_config(config: str, root: Path = Path("/")) -> dict[str, object] | None:
    """k3s' or rke2's merged configuration (e.g. "/etc/rancher/k3s/config.yaml")."""
    from .rancher import rancher_config as merged  # noqa: PLC0415

    return merged(config, root)
