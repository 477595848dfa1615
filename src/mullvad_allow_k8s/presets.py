"""Default cluster ranges and host ports of the common Kubernetes distributions, as data.

A preset only fills in POD_CIDRS, SERVICE_CIDRS and HOST_PORTS when the user gives
none, so a cluster started with non-default ranges just sets those fields. Each value
names where the distribution defines it, so a reader can check it against a release.
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    """One distribution's out-of-the-box address plan and host-side listeners."""

    name: str
    pod_cidrs: tuple[str, ...]
    service_cidrs: tuple[str, ...]
    source: str
    # TCP ports of cluster services that run on the host itself (not in pods behind
    # DNAT) and that clients off this machine need: the API server, rke2's supervisor.
    host_ports: tuple[int, ...]
    host_ports_source: str


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
            (6443,),
            "kube-apiserver --secure-port as kubeadm sets it: InitConfiguration "
            "localAPIEndpoint.bindPort default 6443 (cmd/kubeadm/app/constants "
            "KubeAPIServerPort)",
        ),
        Preset(
            "k3s",
            ("10.42.0.0/16",),
            ("10.43.0.0/16",),
            "k3s server --cluster-cidr / --service-cidr defaults",
            (6443,),
            "k3s server --https-listen-port default 6443 (pkg/cli/cmds/server.go)",
        ),
        Preset(
            "rke2",
            ("10.42.0.0/16",),
            ("10.43.0.0/16",),
            "rke2 server --cluster-cidr / --service-cidr defaults (same as k3s)",
            (6443, 9345),
            "rke2's API server 6443 and its supervisor (node registration) port 9345 "
            "(docs.rke2.io install/requirements, inbound rules for server nodes)",
        ),
        Preset(
            "kind",
            ("10.244.0.0/16",),
            ("10.96.0.0/16",),
            "kind Cluster networking.podSubnet / serviceSubnet defaults (IPv4 family); "
            "kind nodes are containers, so their own network (docker's 'kind' network) "
            "may need adding to POD_CIDRS",
            (),
            "none: kind publishes its API server on 127.0.0.1 (networking.apiServerAddress "
            "default), which needs no exemption",
        ),
        Preset(
            "minikube",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "minikube --service-cluster-ip-range default 10.96.0.0/12 and its "
            "kubeadm pod-network-cidr 10.244.0.0/16",
            (8443,),
            "minikube --apiserver-port default 8443 (pkg/minikube/constants "
            "APIServerPort); on the host only with --driver=none, other drivers run it "
            "in a container or VM",
        ),
        Preset(
            "microk8s",
            ("10.1.0.0/16",),
            ("10.152.183.0/24",),
            "MicroK8s CNI configuration docs: pods 10.1.0.0/16, services 10.152.183.0/24",
            (16443,),
            "MicroK8s kube-apiserver --secure-port=16443 (snap args/kube-apiserver; "
            "MicroK8s docs, services and ports)",
        ),
        Preset(
            "k0s",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "k0s ClusterConfig spec.network podCIDR / serviceCIDR defaults",
            (6443,),
            "k0s ClusterConfig spec.api.port default 6443 (pkg/apis/k0s/v1beta1/api.go)",
        ),
    )
}

DEFAULT_PRESET = "kubeadm"
