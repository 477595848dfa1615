"""Default cluster ranges of the common Kubernetes distributions, as data with sources.

A preset only fills in POD_CIDRS and SERVICE_CIDRS when the user gives none, so a
cluster started with non-default ranges just sets those two fields.
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    """One distribution's out-of-the-box address plan."""

    name: str
    pod_cidrs: tuple[str, ...]
    service_cidrs: tuple[str, ...]
    source: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "kubeadm",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "kubeadm ClusterConfiguration networking.serviceSubnet default 10.96.0.0/12; "
            "kubeadm has no pod subnet default, 10.244.0.0/16 is flannel's and the "
            "kubeadm install guide's --pod-network-cidr",
        ),
        Preset(
            "k3s",
            ("10.42.0.0/16",),
            ("10.43.0.0/16",),
            "k3s server --cluster-cidr / --service-cidr defaults",
        ),
        Preset(
            "rke2",
            ("10.42.0.0/16",),
            ("10.43.0.0/16",),
            "rke2 server --cluster-cidr / --service-cidr defaults (same as k3s)",
        ),
        Preset(
            "kind",
            ("10.244.0.0/16",),
            ("10.96.0.0/16",),
            "kind Cluster networking.podSubnet / serviceSubnet defaults (IPv4 family); "
            "kind nodes are containers, so their own network (docker's 'kind' network) "
            "may need adding to POD_CIDRS",
        ),
        Preset(
            "minikube",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "minikube --service-cluster-ip-range default 10.96.0.0/12 and its "
            "kubeadm pod-network-cidr 10.244.0.0/16",
        ),
        Preset(
            "microk8s",
            ("10.1.0.0/16",),
            ("10.152.183.0/24",),
            "MicroK8s CNI configuration docs: pods 10.1.0.0/16, services 10.152.183.0/24",
        ),
        Preset(
            "k0s",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "k0s ClusterConfig spec.network podCIDR / serviceCIDR defaults",
        ),
    )
}

DEFAULT_PRESET = "kubeadm"
