"""Detection of the running machine's cluster ranges, on fake trees and engine output.

Every input is a fixture under detect_data/ (see its README: written from each tool's
documentation) placed into a temporary root, and the engines' CLIs are a dict from
argv to output. No real engine, file or network is touched.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from mullvad_allow_k8s.detect import DetectError, Found, detect, rancher_config, run_command

DATA = Path(__file__).parent / "detect_data"
MANIFESTS = "/etc/kubernetes/manifests"
K3S = "/etc/rancher/k3s"
MICROK8S = "/var/snap/microk8s/current/args"
FLANNEL_CONF = "/var/lib/rancher/k3s/agent/etc/flannel/net-conf.json"
RKE2_MANIFESTS = "/var/lib/rancher/rke2/agent/pod-manifests"
KIND_DOCKER = ("docker", "network", "inspect", "kind")
KIND_PODMAN = ("podman", "network", "inspect", "kind")
DOCKER_LS = ("docker", "network", "ls", "--no-trunc", "--format", "{{json .}}")
PODMAN_LS = ("podman", "network", "ls", "--format", "json")


class Engines:
    """A fake `run`: argv -> output; anything else behaves like a missing program."""

    def __init__(self, outputs: Mapping[tuple[str, ...], str] | None = None) -> None:
        self.outputs = dict(outputs or {})
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        return self.outputs.get(tuple(argv))


def put(root: Path, target: str, fixture: str | None = None, text: str | None = None) -> Path:
    """Place a fixture (or text) at `target` inside the fake root."""
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fixture is not None:
        shutil.copyfile(DATA / fixture, path)
    else:
        path.write_text(text or "")
    return path


def data(name: str) -> str:
    return (DATA / name).read_text()


def run_detect(
    root: Path, engines: Engines | None = None, env: Mapping[str, str] | None = None
) -> tuple[list[Found], list[DetectError]]:
    return detect(root=root, run=engines or Engines(), env=env or {})


def nets(found: list[Found], distribution: str | None = None) -> list[tuple[str, str]]:
    return [(f.kind, f.network) for f in found if distribution in (None, f.distribution)]


# --- nothing there ----------------------------------------------------------------------


def test_empty_machine_finds_nothing_and_reports_nothing(tmp_path: Path) -> None:
    engines = Engines()
    assert run_detect(tmp_path, engines) == ([], [])
    # Only the engines' and libvirt's own CLIs are ever asked, never a network service.
    assert {argv[0] for argv in engines.calls} <= {"docker", "podman", "virsh"}


# --- kubeadm ----------------------------------------------------------------------------


def test_kubeadm_service_range_without_pod_subnet(tmp_path: Path) -> None:
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", "kubeadm/kube-apiserver.yaml")
    put(
        tmp_path,
        f"{MANIFESTS}/kube-controller-manager.yaml",
        "kubeadm/kube-controller-manager.yaml",
    )
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found(
            "kubeadm",
            "services",
            "10.96.0.0/12",
            None,
            "/etc/kubernetes/manifests/kube-apiserver.yaml: --service-cluster-ip-range",
        )
    ]


def test_kubeadm_dual_stack_pods_and_services(tmp_path: Path) -> None:
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", "kubeadm-dual/kube-apiserver.yaml")
    put(
        tmp_path,
        f"{MANIFESTS}/kube-controller-manager.yaml",
        "kubeadm-dual/kube-controller-manager.yaml",
    )
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert nets(found, "kubeadm") == [
        ("services", "10.96.0.0/16"),
        ("services", "fd00:10:96::/112"),
        ("pods", "10.244.0.0/16"),
        ("pods", "fd00:10:244::/56"),
    ]
    assert found[2].source == (
        "/etc/kubernetes/manifests/kube-controller-manager.yaml: --cluster-cidr"
    )


def test_kubeadm_broken_yaml_is_one_error_and_others_still_detected(tmp_path: Path) -> None:
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text="spec:\n  containers: [\n  - x\n")
    put(tmp_path, "/etc/k0s/k0s.yaml", "k0s/k0s.yaml")
    found, errors = run_detect(tmp_path)
    assert len(errors) == 1
    message = str(errors[0])
    assert message.startswith("/etc/kubernetes/manifests/kube-apiserver.yaml: not valid YAML")
    assert "\n" not in message
    assert {f.distribution for f in found} == {"k0s"}


def test_kubeadm_flag_that_is_not_a_cidr(tmp_path: Path) -> None:
    text = data("kubeadm/kube-apiserver.yaml").replace("10.96.0.0/12", "10.96.0.0/33")
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text=text)
    found, errors = run_detect(tmp_path)
    assert found == []
    assert [str(e) for e in errors] == [
        "/etc/kubernetes/manifests/kube-apiserver.yaml: --service-cluster-ip-range: "
        "'10.96.0.0/33': prefix length must be 0-32"
    ]
    text = data("kubeadm/kube-apiserver.yaml").replace("10.96.0.0/12", "ten.96/12")
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text=text)
    _, errors = run_detect(tmp_path)
    assert "'ten.96/12' is not a CIDR" in str(errors[0])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- just\n- a list\n", "top level is a list, expected a mapping"),
        ("apiVersion: v1\nkind: Pod\n", "no spec.containers list (not a Pod manifest)"),
        ("spec:\n  containers:\n  - name: etcd\n    command: [etcd]\n", "no kube-apiserver"),
    ],
)
def test_kubeadm_manifest_that_is_not_the_apiserver_pod(
    tmp_path: Path, text: str, problem: str
) -> None:
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text=text)
    found, errors = run_detect(tmp_path)
    assert found == []
    assert len(errors) == 1
    assert problem in str(errors[0])


def test_kubeadm_flags_in_args_and_host_bits_masked(tmp_path: Path) -> None:
    text = (
        "spec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver]\n"
        "    args: ['--service-cluster-ip-range', '10.96.0.1/12']\n"
    )
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text=text)
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert nets(found) == [("services", "10.96.0.0/12")]


def test_unreadable_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / MANIFESTS.lstrip("/") / "kube-apiserver.yaml").mkdir(parents=True)
    found, errors = run_detect(tmp_path)
    assert found == []
    assert [str(e) for e in errors] == [
        "/etc/kubernetes/manifests/kube-apiserver.yaml: cannot read: Is a directory"
    ]


# --- k3s --------------------------------------------------------------------------------


def test_k3s_installed_without_config_gets_k3s_defaults(tmp_path: Path) -> None:
    put(tmp_path, "/usr/local/bin/k3s", text="#!/bin/true\n")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found(
            "k3s",
            "pods",
            "10.42.0.0/16",
            "cni0",
            "k3s default (no cluster-cidr in /etc/rancher/k3s/config.yaml or its drop-ins)",
        ),
        Found(
            "k3s",
            "services",
            "10.43.0.0/16",
            None,
            "k3s default (no service-cidr in /etc/rancher/k3s/config.yaml or its drop-ins)",
        ),
    ]


def test_k3s_not_installed_means_no_defaults(tmp_path: Path) -> None:
    (tmp_path / "etc/rancher/k3s").mkdir(parents=True)
    assert run_detect(tmp_path) == ([], [])


def test_k3s_config_alone(tmp_path: Path) -> None:
    put(tmp_path, f"{K3S}/config.yaml", "k3s/config.yaml")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found("k3s", "pods", "10.42.0.0/16", "cni0", "/etc/rancher/k3s/config.yaml: cluster-cidr"),
        Found(
            "k3s", "services", "10.43.0.0/16", None, "/etc/rancher/k3s/config.yaml: service-cidr"
        ),
    ]


def test_k3s_dropins_lexical_order_later_wins_and_plus_appends(tmp_path: Path) -> None:
    put(tmp_path, f"{K3S}/config.yaml", "k3s/config.yaml")
    for name in ("10-pods.yaml", "2-pods.yaml", "50-dualstack.yml", "README"):
        put(tmp_path, f"{K3S}/config.yaml.d/{name}", f"k3s/config.yaml.d/{name}")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert nets(found) == [
        ("pods", "10.62.0.0/16"),  # 2-pods.yaml sorts after 10-pods.yaml
        ("pods", "fd00:42::/56"),  # cluster-cidr+ in 50-dualstack.yml
        ("services", "10.43.0.0/16"),
        ("services", "fd00:43::/112"),  # service-cidr+ appended to config.yaml's
    ]
    assert found[0].source == (
        "/etc/rancher/k3s/config.yaml.d/2-pods.yaml, "
        "/etc/rancher/k3s/config.yaml.d/50-dualstack.yml: cluster-cidr"
    )
    assert found[2].source == (
        "/etc/rancher/k3s/config.yaml, /etc/rancher/k3s/config.yaml.d/50-dualstack.yml: "
        "service-cidr"
    )
    assert "192.0.2.0/24" not in {f.network for f in found}  # README is not a drop-in


def test_k3s_merge_rules_directly(tmp_path: Path) -> None:
    """k3s' configfilearg: replace, `+` appends (lists too), `+` without a base sets."""
    put(tmp_path, f"{K3S}/config.yaml", text="a: x\nb: [1, 2]\nc: keep\n")
    put(tmp_path, f"{K3S}/config.yaml.d/1.yaml", text="a+: y\nb+: [3]\nd+: new\n")
    put(tmp_path, f"{K3S}/config.yaml.d/2.YAML", text="c: replaced\n")
    assert rancher_config(f"{K3S}/config.yaml", root=tmp_path) == {
        "a": ["x", "y"],
        "b": [1, 2, 3],
        "c": "replaced",
        "d": "new",
    }


def test_k3s_dropins_without_main_file(tmp_path: Path) -> None:
    put(tmp_path, f"{K3S}/config.yaml.d/10-pods.yaml", "k3s/config.yaml.d/10-pods.yaml")
    put(tmp_path, "/var/lib/rancher/k3s/server/token", text="x\n")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert nets(found) == [("pods", "10.60.0.0/16"), ("services", "10.43.0.0/16")]
    assert found[1].source.startswith("k3s default")


def test_k3s_comma_separated_dual_stack_and_no_flannel(tmp_path: Path) -> None:
    put(
        tmp_path,
        f"{K3S}/config.yaml",
        text='cluster-cidr: "10.42.0.0/16,fd00:42::/56"\nflannel-backend: none\n',
    )
    put(tmp_path, "/usr/local/bin/k3s", text="")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert [(f.kind, f.network, f.interface) for f in found] == [
        ("pods", "10.42.0.0/16", None),  # another CNI: not on flannel's cni0
        ("pods", "fd00:42::/56", None),
        ("services", "10.43.0.0/16", None),
    ]


def test_k3s_flannel_effective_files_dual_stack(tmp_path: Path) -> None:
    put(tmp_path, FLANNEL_CONF, "flannel/net-conf.json")
    put(tmp_path, "/run/flannel/subnet.env", "flannel/subnet.env")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert [f for f in found if f.kind == "pods"] == [
        Found("k3s", "pods", "10.42.0.0/16", "cni0", f"{FLANNEL_CONF}: Network"),
        Found("k3s", "pods", "fd00:42::/56", "cni0", f"{FLANNEL_CONF}: IPv6Network"),
        Found("k3s", "pods", "10.42.0.0/16", "cni0", "/run/flannel/subnet.env: FLANNEL_NETWORK"),
        Found(
            "k3s", "pods", "fd00:42::/56", "cni0", "/run/flannel/subnet.env: FLANNEL_IPV6_NETWORK"
        ),
    ]
    # k3s installed (its data dir exists): the pod range is known, only services default.
    assert [f for f in found if f.kind == "services"] == [
        Found(
            "k3s",
            "services",
            "10.43.0.0/16",
            None,
            "k3s default (no service-cidr in /etc/rancher/k3s/config.yaml or its drop-ins)",
        )
    ]


def test_k3s_flannel_ipv6_only_when_enabled(tmp_path: Path) -> None:
    conf = json.loads(data("flannel/net-conf.json"))
    conf["EnableIPv6"] = False
    put(tmp_path, FLANNEL_CONF, text=json.dumps(conf))
    found, _ = run_detect(tmp_path)
    assert ("pods", "fd00:42::/56") not in nets(found)


def test_k3s_unit_flags(tmp_path: Path) -> None:
    put(tmp_path, "/etc/systemd/system/k3s.service", "k3s/k3s.service")
    put(tmp_path, "/usr/local/bin/k3s", text="")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found(
            "k3s",
            "pods",
            "10.52.0.0/16",
            None,
            "/etc/systemd/system/k3s.service: ExecStart --cluster-cidr",
        ),
        Found(
            "k3s",
            "services",
            "10.53.0.0/16",
            None,
            "/etc/systemd/system/k3s.service: ExecStart --service-cidr",
        ),
    ]


def test_k3s_broken_dropin_withholds_defaults_but_flannel_still_read(tmp_path: Path) -> None:
    put(tmp_path, "/usr/local/bin/k3s", text="")
    put(tmp_path, f"{K3S}/config.yaml", "k3s/config.yaml")
    put(tmp_path, f"{K3S}/config.yaml.d/20-bad.yaml", text="cluster-cidr: [10.42.0.0/16\n")
    put(tmp_path, "/run/flannel/subnet.env", "flannel/subnet.env")
    found, errors = run_detect(tmp_path)
    assert len(errors) == 1
    assert str(errors[0]).startswith("/etc/rancher/k3s/config.yaml.d/20-bad.yaml: not valid YAML")
    assert all(f.source.startswith("/run/flannel/subnet.env") for f in found)
    assert nets(found) == [("pods", "10.42.0.0/16"), ("pods", "fd00:42::/56")]


def test_k3s_bad_value_names_the_file_it_came_from(tmp_path: Path) -> None:
    put(tmp_path, f"{K3S}/config.yaml", text="service-cidr: 10.43.0.0/16\n")
    put(tmp_path, f"{K3S}/config.yaml.d/9.yaml", text="service-cidr+: [not-a-cidr]\n")
    found, errors = run_detect(tmp_path)
    assert found == []
    assert [str(e) for e in errors] == [
        "/etc/rancher/k3s/config.yaml.d/9.yaml: service-cidr: 'not-a-cidr' is not a CIDR "
        "(ADDRESS/PREFIX)"
    ]


def test_k3s_top_level_not_a_mapping(tmp_path: Path) -> None:
    put(tmp_path, f"{K3S}/config.yaml", text="- cluster-cidr\n")
    _, errors = run_detect(tmp_path)
    assert [str(e) for e in errors] == [
        "/etc/rancher/k3s/config.yaml: top level is a list, expected a mapping"
    ]


# --- rke2 -------------------------------------------------------------------------------


def test_rke2_config_pod_manifests_and_default_services(tmp_path: Path) -> None:
    put(tmp_path, "/etc/rancher/rke2/config.yaml", "rke2/config.yaml")
    put(tmp_path, f"{RKE2_MANIFESTS}/kube-proxy.yaml", "rke2/kube-proxy.yaml")
    put(tmp_path, "/usr/local/bin/rke2", text="")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert [(f.kind, f.network, f.source) for f in found] == [
        ("pods", "10.42.0.0/16", "/etc/rancher/rke2/config.yaml: cluster-cidr"),
        ("pods", "fd00:42::/56", "/etc/rancher/rke2/config.yaml: cluster-cidr"),
        ("pods", "10.42.0.0/16", f"{RKE2_MANIFESTS}/kube-proxy.yaml: --cluster-cidr"),
        ("pods", "fd00:42::/56", f"{RKE2_MANIFESTS}/kube-proxy.yaml: --cluster-cidr"),
        (
            "services",
            "10.43.0.0/16",
            "rke2 default (no service-cidr in /etc/rancher/rke2/config.yaml or its drop-ins)",
        ),
    ]
    assert {f.distribution for f in found} == {"rke2"}
    assert {f.interface for f in found} == {None}  # canal: no single bridge


def test_rke2_reads_flannel_subnet_env_only_when_installed(tmp_path: Path) -> None:
    put(tmp_path, "/run/flannel/subnet.env", "flannel/subnet.env")
    assert run_detect(tmp_path) == ([], [])  # neither k3s nor rke2 here: not ours to claim
    put(tmp_path, "/var/lib/rancher/rke2/server/token", text="")
    found, _ = run_detect(tmp_path)
    assert ("rke2", "pods", "10.42.0.0/16") in {(f.distribution, f.kind, f.network) for f in found}


# --- MicroK8s ---------------------------------------------------------------------------


def test_microk8s_args_and_cni_env(tmp_path: Path) -> None:
    for name in ("kube-proxy", "kube-apiserver", "cni-env"):
        put(tmp_path, f"{MICROK8S}/{name}", f"microk8s/{name}")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found("microk8s", "pods", "10.1.0.0/16", None, f"{MICROK8S}/kube-proxy: --cluster-cidr"),
        Found(
            "microk8s",
            "services",
            "10.152.183.0/24",
            None,
            f"{MICROK8S}/kube-apiserver: --service-cluster-ip-range",
        ),
        Found("microk8s", "pods", "10.1.0.0/16", None, f"{MICROK8S}/cni-env: IPv4_CLUSTER_CIDR"),
        Found(
            "microk8s",
            "services",
            "10.152.183.0/24",
            None,
            f"{MICROK8S}/cni-env: IPv4_SERVICE_CIDR",
        ),
    ]


def test_microk8s_dual_stack(tmp_path: Path) -> None:
    put(
        tmp_path,
        f"{MICROK8S}/cni-env",
        text=data("microk8s/cni-env").replace("IPv6_SUPPORT=false", "IPv6_SUPPORT=true"),
    )
    put(
        tmp_path,
        f"{MICROK8S}/kube-proxy",
        text=data("microk8s/kube-proxy").replace("10.1.0.0/16", "10.1.0.0/16,fd01::/64"),
    )
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert nets(found) == [
        ("pods", "10.1.0.0/16"),
        ("pods", "fd01::/64"),
        ("pods", "10.1.0.0/16"),
        ("services", "10.152.183.0/24"),
        ("pods", "fd01::/64"),
        ("services", "fd98::/108"),
    ]


def test_microk8s_bad_value_spares_the_other_file(tmp_path: Path) -> None:
    put(tmp_path, f"{MICROK8S}/kube-proxy", text="--cluster-cidr=10.1.0.0\n")
    put(tmp_path, f"{MICROK8S}/kube-apiserver", "microk8s/kube-apiserver")
    found, errors = run_detect(tmp_path)
    assert [str(e) for e in errors] == [
        f"{MICROK8S}/kube-proxy: --cluster-cidr: '10.1.0.0' is not a CIDR (ADDRESS/PREFIX)"
    ]
    assert nets(found) == [("services", "10.152.183.0/24")]


# --- k0s --------------------------------------------------------------------------------


def test_k0s_dual_stack_kube_router(tmp_path: Path) -> None:
    put(tmp_path, "/etc/k0s/k0s.yaml", "k0s/k0s.yaml")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert found == [
        Found(
            "k0s", "pods", "10.244.0.0/16", "kube-bridge", "/etc/k0s/k0s.yaml: spec.network.podCIDR"
        ),
        Found(
            "k0s", "services", "10.96.0.0/12", None, "/etc/k0s/k0s.yaml: spec.network.serviceCIDR"
        ),
        Found(
            "k0s",
            "pods",
            "fd00::/108",
            "kube-bridge",
            "/etc/k0s/k0s.yaml: spec.network.dualStack.IPv6podCIDR",
        ),
        Found(
            "k0s",
            "services",
            "fd01::/108",
            None,
            "/etc/k0s/k0s.yaml: spec.network.dualStack.IPv6serviceCIDR",
        ),
    ]


def test_k0s_calico_partial_config_fills_defaults(tmp_path: Path) -> None:
    put(tmp_path, "/etc/k0s/k0s.yaml", "k0s/k0s-calico.yaml")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert [(f.kind, f.network, f.interface, f.source) for f in found] == [
        ("pods", "10.50.0.0/16", None, "/etc/k0s/k0s.yaml: spec.network.podCIDR"),
        (
            "services",
            "10.96.0.0/12",
            None,
            "k0s default (no spec.network.serviceCIDR in /etc/k0s/k0s.yaml)",
        ),
    ]


def test_k0s_installed_without_config(tmp_path: Path) -> None:
    put(tmp_path, "/usr/local/bin/k0s", text="")
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert [(f.kind, f.network, f.interface) for f in found] == [
        ("pods", "10.244.0.0/16", "kube-bridge"),
        ("services", "10.96.0.0/12", None),
    ]
    assert found[0].source == "k0s default (k0s installed, no /etc/k0s/k0s.yaml)"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("spec:\n  network: [podCIDR]\n", "spec.network is a list, expected a mapping"),
        ("spec: [network]\n", "spec is a list, expected a mapping"),
        ("spec:\n  network:\n    podCIDR: 10.244.0.0\n", "spec.network.podCIDR: '10.244.0.0'"),
    ],
)
def test_k0s_broken_config_gives_no_defaults(tmp_path: Path, text: str, problem: str) -> None:
    put(tmp_path, "/usr/local/bin/k0s", text="")
    put(tmp_path, "/etc/k0s/k0s.yaml", text=text)
    found, errors = run_detect(tmp_path)
    assert found == []
    assert len(errors) == 1
    assert str(errors[0]).startswith(f"/etc/k0s/k0s.yaml: {problem}")


# --- kind -------------------------------------------------------------------------------


def test_kind_docker_dual_stack(tmp_path: Path) -> None:
    engines = Engines({KIND_DOCKER: data("docker/inspect-kind.json")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert found == [
        Found(
            "kind",
            "nodes",
            "172.18.0.0/16",
            "br-5e1c4f3a9b2d",
            "docker network inspect kind: IPAM.Config[0].Subnet",
        ),
        Found(
            "kind",
            "nodes",
            "fc00:f853:ccd:e793::/64",
            "br-5e1c4f3a9b2d",
            "docker network inspect kind: IPAM.Config[1].Subnet",
        ),
    ]


def test_kind_docker_bridge_name_option(tmp_path: Path) -> None:
    engines = Engines({KIND_DOCKER: data("docker/inspect-kind-named-bridge.json")})
    found, _ = run_detect(tmp_path, engines)
    assert [(f.network, f.interface) for f in found] == [("172.19.0.0/16", "kindbr0")]


def test_kind_podman_netavark(tmp_path: Path) -> None:
    engines = Engines({KIND_PODMAN: data("podman/inspect-kind-netavark.json")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert found == [
        Found(
            "kind",
            "nodes",
            "fc00:f853:ccd:e793::/64",
            "podman1",
            "podman network inspect kind: subnets[0].subnet",
        ),
        Found(
            "kind",
            "nodes",
            "10.89.0.0/24",
            "podman1",
            "podman network inspect kind: subnets[1].subnet",
        ),
    ]


def test_kind_podman3_cni_conflist(tmp_path: Path) -> None:
    engines = Engines({KIND_PODMAN: data("podman/inspect-kind-cni.json")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [(f.network, f.interface) for f in found] == [
        ("10.89.0.0/24", "cni-podman1"),
        ("fc00:f853:ccd:e793::/64", "cni-podman1"),
    ]
    assert found[0].source == "podman network inspect kind: plugins[0].ipam.ranges[0][0].subnet"


def test_kind_network_name_from_environment(tmp_path: Path) -> None:
    engines = Engines(
        {
            ("docker", "network", "inspect", "kind-lab"): data("docker/inspect-kind.json"),
            ("podman", "network", "inspect", "kind-pod"): data("podman/inspect-kind-netavark.json"),
        }
    )
    env = {
        "KIND_EXPERIMENTAL_DOCKER_NETWORK": "kind-lab",
        "KIND_EXPERIMENTAL_PODMAN_NETWORK": "kind-pod",
    }
    found, errors = run_detect(tmp_path, engines, env)
    assert errors == []
    assert KIND_DOCKER not in engines.calls and KIND_PODMAN not in engines.calls
    assert {f.interface for f in found} == {"br-5e1c4f3a9b2d", "podman1"}


def test_kind_engine_answer_not_json(tmp_path: Path) -> None:
    engines = Engines(
        {
            KIND_DOCKER: "Error: something went wrong\n",
            KIND_PODMAN: data("podman/inspect-kind-netavark.json"),
        }
    )
    found, errors = run_detect(tmp_path, engines)
    assert len(errors) == 1
    assert str(errors[0]).startswith("docker network inspect kind: not valid JSON")
    assert {f.interface for f in found} == {"podman1"}


def test_kind_engine_subnet_not_a_cidr(tmp_path: Path) -> None:
    text = data("docker/inspect-kind.json").replace('"172.18.0.0/16"', '"172.18.0.0"')
    found, errors = run_detect(tmp_path, Engines({KIND_DOCKER: text}))
    assert found == []
    assert [str(e) for e in errors] == [
        "docker network inspect kind: kind: IPAM.Config[0].Subnet: '172.18.0.0' is not a CIDR "
        "(ADDRESS/PREFIX)"
    ]


# --- k3d --------------------------------------------------------------------------------


def test_k3d_networks_by_label_or_name(tmp_path: Path) -> None:
    inspect = ("docker", "network", "inspect", "k3d-dev", "shared-lab")
    engines = Engines(
        {DOCKER_LS: data("docker/network-ls.jsonl"), inspect: data("docker/inspect-k3d.json")}
    )
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert inspect in engines.calls
    assert found == [
        Found(
            "k3d",
            "nodes",
            "172.20.0.0/16",
            "br-3b7f0c2e9d4a",
            "docker network inspect k3d-dev: IPAM.Config[0].Subnet",
        ),
        Found(
            "k3d",
            "nodes",
            "172.21.0.0/16",
            "br-4c8a1d3f0e5b",
            "docker network inspect shared-lab: IPAM.Config[0].Subnet",
        ),
    ]


def test_k3d_on_podman(tmp_path: Path) -> None:
    listing = json.loads(data("podman/network-ls.json"))
    engines = Engines(
        {
            PODMAN_LS: json.dumps(listing),
            ("podman", "network", "inspect", "k3d-pod"): json.dumps([listing[1]]),
        }
    )
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [(f.distribution, f.network, f.interface) for f in found] == [
        ("k3d", "10.89.1.0/24", "podman2")
    ]


def test_k3d_broken_listing(tmp_path: Path) -> None:
    engines = Engines({DOCKER_LS: '{"Name": "k3d-dev"\n'})
    found, errors = run_detect(tmp_path, engines)
    assert found == []
    assert len(errors) == 1
    assert str(errors[0]).startswith("docker network ls: not valid JSON")


# --- minikube ---------------------------------------------------------------------------

MINIKUBE_LABELS = "created_by.minikube.sigs.k8s.io=true,name.minikube.sigs.k8s.io=minikube"
VIRSH_LIST = ("virsh", "--connect", "qemu:///system", "net-list", "--all", "--name")


def docker_listing_with_minikube() -> str:
    """`docker network ls` with the network minikube's docker driver made (its labels:
    pkg/drivers/kic/oci/network_create.go, minikube v1.34)."""
    row = {"Driver": "bridge", "ID": "9d2e4f6a8b0c" + "1" * 52, "Labels": MINIKUBE_LABELS}
    return data("docker/network-ls.jsonl") + json.dumps({**row, "Name": "minikube"}) + "\n"


def test_minikube_docker_driver_network_found_by_its_labels(tmp_path: Path) -> None:
    inspect = ("docker", "network", "inspect", "minikube")
    engines = Engines(
        {DOCKER_LS: docker_listing_with_minikube(), inspect: data("docker/inspect-minikube.json")}
    )
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [f for f in found if f.distribution == "minikube"] == [
        Found(
            "minikube",
            "nodes",
            "192.168.49.0/24",
            "br-9d2e4f6a8b0c",
            "docker network inspect minikube: IPAM.Config[0].Subnet",
        )
    ]


def test_minikube_podman_driver_network_found_by_its_labels(tmp_path: Path) -> None:
    listing = json.loads(data("podman/network-ls.json"))
    mk = {**listing[0], "name": "mk-pod", "network_interface": "podman7"}
    mk["subnets"] = [{"subnet": "192.168.58.0/24", "gateway": "192.168.58.1"}]
    mk["labels"] = dict(p.split("=") for p in MINIKUBE_LABELS.split(","))
    engines = Engines(
        {
            PODMAN_LS: json.dumps([*listing, mk]),
            ("podman", "network", "inspect", "mk-pod"): json.dumps([mk]),
        }
    )
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [(f.distribution, f.network, f.interface) for f in found] == [
        ("minikube", "192.168.58.0/24", "podman7"),
    ]


def test_minikube_network_without_its_labels_is_not_minikube(tmp_path: Path) -> None:
    """A network merely named like a profile (Docker's bridge, Podman's podman) is not
    minikube's: only the labels minikube sets say so."""
    engines = Engines({DOCKER_LS: data("docker/network-ls.jsonl")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [f for f in found if f.distribution == "minikube"] == []
    assert not any(argv[:4] == ("docker", "network", "inspect", "bridge") for argv in engines.calls)


def test_minikube_kvm2_libvirt_network(tmp_path: Path) -> None:
    virsh = ("virsh", "--connect", "qemu:///system", "net-dumpxml", "mk-dev")
    engines = Engines({VIRSH_LIST: "default\nmk-dev\n\n", virsh: data("libvirt/mk-dev.xml")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert found == [
        Found(
            "minikube",
            "nodes",
            "192.168.39.0/24",
            "virbr1",
            "virsh net-dumpxml mk-dev: <ip address='192.168.39.1'>",
        )
    ]
    # qemu:///system only, and only minikube's networks are dumped.
    assert {argv for argv in engines.calls if argv[0] == "virsh"} == {VIRSH_LIST, virsh}


def test_minikube_kvm2_dual_stack_xml_and_missing_virsh(tmp_path: Path) -> None:
    virsh = ("virsh", "--connect", "qemu:///system", "net-dumpxml", "mk-dual")
    engines = Engines({VIRSH_LIST: "mk-dual\n", virsh: data("libvirt/mk-dual.xml")})
    found, errors = run_detect(tmp_path, engines)
    assert errors == []
    assert [(f.network, f.interface) for f in found] == [
        ("192.168.50.0/24", "virbr2"),
        ("fd12:3456:789a:1::/64", "virbr2"),
    ]
    assert run_detect(tmp_path) == ([], [])  # no virsh: nothing


def test_minikube_kvm2_broken_xml(tmp_path: Path) -> None:
    virsh = ("virsh", "--connect", "qemu:///system", "net-dumpxml", "mk-dev")
    engines = Engines({VIRSH_LIST: "mk-dev\n", virsh: "<network><name>mk-dev</name>"})
    found, errors = run_detect(tmp_path, engines)
    assert found == []
    assert str(errors[0]).startswith("virsh net-dumpxml mk-dev: not valid XML")


def test_minikube_kvm2_listing_names_are_checked(tmp_path: Path) -> None:
    engines = Engines({VIRSH_LIST: "mk---help\nmk-a b\n-mk\n"})
    found, errors = run_detect(tmp_path, engines)
    assert (found, errors) == ([], [])
    dumped = [argv[-1] for argv in engines.calls if "net-dumpxml" in argv]
    assert dumped == ["mk---help"]  # a name (NAME: no leading '-'), never an option


def test_minikube_none_driver_is_kubeadm_with_minikube_certificates(tmp_path: Path) -> None:
    """minikube's none driver runs kubeadm here with certificatesDir /var/lib/minikube/certs:
    root's manifests say so; no profile is read."""
    api = data("kubeadm-dual/kube-apiserver.yaml").replace(
        "/etc/kubernetes/pki/ca.crt", "/var/lib/minikube/certs/ca.crt"
    )
    assert "/var/lib/minikube/certs/ca.crt" in api
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", text=api)
    put(
        tmp_path,
        f"{MANIFESTS}/kube-controller-manager.yaml",
        "kubeadm-dual/kube-controller-manager.yaml",
    )
    found, errors = run_detect(tmp_path)
    assert errors == []
    assert {(f.distribution, f.kind, f.interface) for f in found} == {
        ("minikube", "services", None),
        ("minikube", "pods", "bridge"),
    }


def test_users_minikube_profiles_are_never_read(tmp_path: Path) -> None:
    """Issue 20: a profile in a home (or root's) decides nothing and runs nothing."""
    for home in ("/home/ada", "/root"):
        for name, fixture in (
            ("d", "config-docker.json"),
            ("k", "config-kvm2.json"),
            ("n", "config-none.json"),
        ):
            config = json.loads(data(f"minikube/{fixture}"))
            config["KVMQemuURI"] = "qemu+ext:///system?command=/home/ada/evil.sh"
            config["Network"] = "bridge"
            put(tmp_path, f"{home}/.minikube/profiles/{name}/config.json", text=json.dumps(config))
    engines = Engines({DOCKER_LS: data("docker/network-ls.jsonl")})
    found, errors = run_detect(tmp_path, engines, {"MINIKUBE_HOME": "/home/ada"})
    assert (found, errors) == ([], [])
    words = {w for argv in engines.calls for w in argv}
    assert not any("ext" in w or w == "bridge" for w in words)


# --- everything at once -----------------------------------------------------------------


def test_a_busy_machine(tmp_path: Path) -> None:
    put(tmp_path, f"{MANIFESTS}/kube-apiserver.yaml", "kubeadm/kube-apiserver.yaml")
    put(tmp_path, f"{K3S}/config.yaml", "k3s/config.yaml")
    put(tmp_path, f"{MICROK8S}/kube-proxy", "microk8s/kube-proxy")
    put(tmp_path, "/etc/k0s/k0s.yaml", "k0s/k0s.yaml")
    put(tmp_path, "/etc/rancher/rke2/config.yaml", text="{{{")
    engines = Engines(
        {
            KIND_DOCKER: data("docker/inspect-kind.json"),
            DOCKER_LS: docker_listing_with_minikube(),
            ("docker", "network", "inspect", "k3d-dev", "shared-lab"): data(
                "docker/inspect-k3d.json"
            ),
            ("docker", "network", "inspect", "minikube"): data("docker/inspect-minikube.json"),
        }
    )
    found, errors = run_detect(tmp_path, engines)
    assert [e.where for e in errors] == ["/etc/rancher/rke2/config.yaml"]
    order = []
    for f in found:
        if f.distribution not in order:
            order.append(f.distribution)
    assert order == ["kubeadm", "k3s", "microk8s", "k0s", "kind", "minikube", "k3d"]
    assert len(set(engines.calls)) == len(engines.calls)  # each command run once


# --- the real runner and the error type -------------------------------------------------


def test_run_command_runs_only_our_programs() -> None:
    with pytest.raises(ValueError, match="not a program"):
        run_command([sys.executable, "-c", "print('hi')"])
    with pytest.raises(ValueError, match="neither a constant nor a name"):
        run_command(["virsh", "--connect", "qemu+ext:///system?command=/x", "net-list"])


def test_detect_error_is_one_line() -> None:
    error = DetectError("/etc/k0s/k0s.yaml", "not valid YAML: while parsing\n  in line 3\n")
    assert str(error) == "/etc/k0s/k0s.yaml: not valid YAML: while parsing in line 3"
    assert error.where == "/etc/k0s/k0s.yaml"


# --- what reaches argv and the ruleset is checked ---------------------------------------


def test_engine_bridge_name_that_is_not_an_interface_name(tmp_path: Path) -> None:
    text = data("docker/inspect-kind-named-bridge.json").replace('"kindbr0"', '"br0; drop"')
    found, errors = run_detect(tmp_path, Engines({KIND_DOCKER: text}))
    assert found == []
    assert [str(e) for e in errors] == [
        "docker network inspect kind: com.docker.network.bridge.name: 'br0; drop' is not an "
        "interface name"
    ]


def test_network_names_are_never_options(tmp_path: Path) -> None:
    engines = Engines()
    _, errors = run_detect(tmp_path, engines, {"KIND_EXPERIMENTAL_DOCKER_NETWORK": "--help"})
    assert [str(e) for e in errors] == [
        "docker network ls: ignored: '--help' is not a network name"
    ]
    assert [e.fatal for e in errors] == [False]
    assert not any("--help" in argv for argv in engines.calls)


def test_each_error_names_the_distribution_whose_files_it_is(tmp_path: Path) -> None:
    config = tmp_path / "etc/rancher/k3s/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("cluster-cidr: [\n")
    _, errors = detect(tmp_path, lambda argv: None, {})
    assert [(e.distribution, e.where) for e in errors] == [("k3s", "/etc/rancher/k3s/config.yaml")]
