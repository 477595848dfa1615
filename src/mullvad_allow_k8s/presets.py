"""Default cluster ranges and host ports of the common Kubernetes distributions, as data.

A preset fills in POD_CIDRS, SERVICE_CIDRS, NODE_NETWORKS and HOST_PORTS where the user
gives none and nothing was detected, so a cluster started with non-default ranges just
sets those fields. Each value names where the distribution defines it, so a reader can
check it against a release.

Clusters that run in containers or VMs (kind, k3d, minikube's docker and kvm2 drivers)
show the host only their node network: their presets exempt that network, bound to the
kind of bridge it lives on, and no pod or service range (those never reach the host).
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
    # Node networks of container/VM clusters, as CIDR@INTERFACE (a NAME* pattern: the
    # bridge's name is only known once the engine made it; detection binds the exact one).
    node_networks: tuple[str, ...] = ()
    node_networks_source: str = "none: the nodes are this machine"
    # The distribution whose detected ranges the preset takes (detect.Found's name),
    # where it is not the preset's own name: minikube's drivers.
    distribution: str = ""


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
            (),
            (),
            "none: kind's pods and services live inside its node containers, which "
            "masquerade pod traffic to the node address (kindnetd) and DNAT ClusterIPs "
            "inside the node",
            (),
            "none: kind publishes its API server on 127.0.0.1 (networking.apiServerAddress "
            "default), reached through the node network",
            ("172.18.0.0/16@br-*", "fc00:f853:ccd:e793::/64@br-*"),
            "kind's Docker network 'kind' (pkg/cluster/internal/providers/docker/network.go: "
            "IPv6 ULA fc00:f853:ccd:e793::/64; IPv4 as Docker picks it, 172.18.0.0/16 the "
            "first free pool of moby's default address pools) on a br-<id> bridge",
        ),
        Preset(
            "k3d",
            (),
            (),
            "none: k3s' pods and services live inside k3d's node containers",
            (),
            "none: k3d publishes the API server through its load balancer container on the "
            "node network (pkg/types/defaults.go)",
            ("172.18.0.0/16@br-*",),
            "k3d's Docker network k3d-<cluster> (pkg/types/defaults.go), subnet as Docker "
            "picks it (172.18.0.0/16 the first free pool of moby's default address pools) on "
            "a br-<id> bridge",
        ),
        Preset(
            "minikube",
            (),
            (),
            "none: with the docker driver (minikube's preferred one) pods and services live "
            "inside the node container",
            (),
            "none: the API server (8443) runs inside the node container, reached through "
            "the node network",
            ("192.168.49.0/24@br-*",),
            "minikube's docker network named after the profile, 192.168.49.0/24 first "
            "(pkg/drivers/kic/oci/network_create.go firstSubnetAddr)",
        ),
        Preset(
            "minikube-kvm2",
            (),
            (),
            "none: with the kvm2 driver pods and services live inside the VM",
            (),
            "none: the API server (8443) runs inside the VM",
            ("192.168.39.0/24@virbr*",),
            "minikube's libvirt network mk-<profile>, 192.168.39.0/24 first (kvm2 driver "
            "network.go firstSubnetAddr) on a virbrN bridge",
            distribution="minikube",
        ),
        Preset(
            "minikube-none",
            ("10.244.0.0/16",),
            ("10.96.0.0/12",),
            "minikube --driver=none (kubeadm on this machine): --service-cluster-ip-range "
            "default 10.96.0.0/12 and its kubeadm pod-network-cidr 10.244.0.0/16 "
            "(pkg/minikube/cni/cni.go), pods on the bridge CNI's interface 'bridge'",
            (8443,),
            "minikube --apiserver-port default 8443 (pkg/minikube/constants APIServerPort)",
            distribution="minikube",
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

# PRESET=auto without anything detected: kubeadm's plan, the upstream default.
FALLBACK_PRESET = "kubeadm"


# Where each distribution sets each kind of range (their documented settings).
RANGE_SETTINGS: dict[str, dict[str, str]] = {
    "kubeadm": {
        "pods": "kubeadm init --pod-network-cidr (ClusterConfiguration networking.podSubnet)",
        "services": "kubeadm init --service-cidr (ClusterConfiguration networking.serviceSubnet)",
    },
    "k3s": {
        "pods": "cluster-cidr in /etc/rancher/k3s/config.yaml",
        "services": "service-cidr in /etc/rancher/k3s/config.yaml",
    },
    "rke2": {
        "pods": "cluster-cidr in /etc/rancher/rke2/config.yaml",
        "services": "service-cidr in /etc/rancher/rke2/config.yaml",
    },
    "k0s": {
        "pods": "spec.network.podCIDR in /etc/k0s/k0s.yaml",
        "services": "spec.network.serviceCIDR in /etc/k0s/k0s.yaml",
    },
    "microk8s": {
        "pods": "--cluster-cidr in /var/snap/microk8s/current/args/kube-proxy and Calico's pool",
        "services": "--service-cluster-ip-range in /var/snap/microk8s/current/args/kube-apiserver",
    },
    "minikube-none": {
        "pods": "minikube start --extra-config=kubeadm.pod-network-cidr=...",
        "services": "minikube start --service-cluster-ip-range=...",
    },
    "kind": {
        "nodes": "`docker network create --subnet ... kind` (or `podman network create`) "
        "before `kind create cluster`"
    },
    "k3d": {"nodes": "k3d cluster create --subnet ..."},
    "minikube": {"nodes": "minikube start --subnet ..."},
    "minikube-kvm2": {"nodes": "a libvirt network of your own: minikube start --network ..."},
}
