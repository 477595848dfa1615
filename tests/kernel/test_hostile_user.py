"""Issue 20: an unprivileged local user must not steer, stall or exploit root's detection.

Black-box through the real CLI run as root (tests/kernel/hostile.py: private mount, net
and PID namespaces; /home a fresh tmpfs holding /home/mallory, uid 4242). Each test runs
the same commands twice in the same namespaces: before and after mallory (uid 4242)
wrote her files. With them present, root's CLI must

- exempt exactly what it exempts without them (the same `settings` output, JSON and the
  env form with its origin lines; the same exit status, 0 for `settings`),
- execute nothing of hers and connect nowhere she names,
- finish within FAST seconds (each run is killed after COMMAND_TIMEOUT),
- still find the clusters root runs (a kubeadm control plane, a kind network).

The machine's own tools are real: the kernel, Debian's podman (its default network
`podman` and a network named `kind` made in the namespace's private Podman state) and
libvirt's `virsh`. Only Docker's engine is a stand-in (hostile.FAKE_DOCKER, root-owned,
over /usr/local/bin/docker on the fixed PATH), since no Docker daemon runs here.
A missing tool fails the test, with the Debian package to install (.ci/apt/security.txt).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import is_root
from tests.kernel.hostile import (
    DOCTOR,
    HOME,
    PROFILES,
    SETTINGS_ENV,
    SETTINGS_JSON,
    Entry,
    Outcome,
    Scene,
    fake_docker,
    mallory_file,
    missing_tools,
    profile,
    run_scene,
)

pytestmark = pytest.mark.kernel

FAST = 10.0  # seconds a CLI run may take with the hostile files present
SSH_PORT = 2222
TCP_PORT = 16509  # libvirtd's TCP port, here a listener in the private netns
TRUDY_UID = 4343  # a second user, for the symlinked `profiles` directory

# Root's own cluster: a kubeadm control plane with non-default ranges.
KUBEADM_SERVICES = "10.112.0.0/16"
KUBEADM_PODS = "10.236.0.0/16"
APISERVER = f"""apiVersion: v1
kind: Pod
metadata:
  labels: {{component: kube-apiserver, tier: control-plane}}
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=192.168.1.20
    - --secure-port=6443
    - --service-cluster-ip-range={KUBEADM_SERVICES}
    image: registry.k8s.io/kube-apiserver:v1.31.2
    name: kube-apiserver
  hostNetwork: true
"""
CONTROLLER_MANAGER = f"""apiVersion: v1
kind: Pod
metadata:
  labels: {{component: kube-controller-manager, tier: control-plane}}
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-controller-manager
    - --allocate-node-cidrs=true
    - --cluster-cidr={KUBEADM_PODS}
    - --service-cluster-ip-range={KUBEADM_SERVICES}
    image: registry.k8s.io/kube-controller-manager:v1.31.2
    name: kube-controller-manager
  hostNetwork: true
"""
KUBEADM = [
    Entry(f"/etc/kubernetes/manifests/{name}.yaml", content=text, mode=0o600, uid=0)
    for name, text in (
        ("kube-apiserver", APISERVER),
        ("kube-controller-manager", CONTROLLER_MANAGER),
    )
]
ELSEWHERE = "/etc/mak-elsewhere/profiles"  # root's directory a user's symlink points at


def need(*tools: str) -> None:
    """Fail (never skip) when a tool the case needs is not on the fixed PATH."""
    if not is_root():
        pytest.skip("needs root (namespaces, mounts); CI runs as root")
    missing = missing_tools(*tools)
    packages = {"virsh": "libvirt-clients", "ssh": "openssh-client", "podman": "podman"}
    assert not missing, (
        f"missing {', '.join(missing)}: apt-get install "
        f"{' '.join(packages.get(t, t) for t in missing)} (.ci/apt/security.txt)"
    )


def work(tmp_path: Path) -> Path:
    """A root-only directory (pytest's tmp_path is under a 0700 directory of root)."""
    path = tmp_path / "root-only"
    path.mkdir(mode=0o700)
    return path


def evil(marker: Path) -> Entry:
    """mallory's program: records the uid it ran as where only root can write."""
    return mallory_file(f"{HOME}/evil.sh", f"#!/bin/sh\nid -u > {marker}\n", mode=0o755)


def kvm2(name: str, uri: str) -> Entry:
    return profile(
        name,
        {"Name": name, "Driver": "kvm2", "KVMQemuURI": uri, "KubernetesConfig": {}},
    )


def ext_uri() -> str:
    return f"qemu+ext:///system?command={HOME}/evil.sh"


def none_driver(name: str) -> Entry:
    options = [{"Component": "kubeadm", "Key": "pod-network-cidr", "Value": "10.99.0.0/16"}]
    return profile(
        name,
        {
            "Name": name,
            "Driver": "none",
            "KubernetesConfig": {"ServiceCIDR": "10.111.0.0/16", "ExtraOptions": options},
        },
    )


def unreadable(case: str) -> list[Entry]:
    """Profiles that are no file to read (or no minikube's), and the profiles directory
    as a symlink to root's directory holding a valid-looking profile."""
    config = f"{PROFILES}/{case}/config.json"
    if case == "fifo":
        return [Entry(config, "fifo")]
    if case == "dev_zero":
        return [Entry(config, "symlink", target="/dev/zero")]
    if case == "huge":
        return [Entry(config, "sparse", size=100 * 1024 * 1024)]
    if case == "broken_json":
        return [mallory_file(config, '{"Name": "broken_json", "Driver": "podman", "Net')]
    if case == "symlinked_profiles":
        home = "/home/trudy"
        return [
            Entry(f"{home}/.minikube", "dir", mode=0o755, uid=TRUDY_UID),
            Entry(f"{home}/.minikube/profiles", "symlink", target=ELSEWHERE, uid=TRUDY_UID),
        ]
    raise ValueError(case)


def elsewhere() -> list[Entry]:
    """Root's own directory, outside any home, that trudy's symlink points at."""
    config = {"Name": "p", "Driver": "podman", "Network": "podman", "KubernetesConfig": {}}
    return [Entry(f"{ELSEWHERE}/p/config.json", content=json.dumps(config), uid=0)]


UNREADABLE = ("fifo", "dev_zero", "huge", "broken_json", "symlinked_profiles")


def every_hostile(marker: Path) -> list[Entry]:
    """Every hostile profile of this file at once (one profile directory each)."""
    entries = [
        evil(marker),
        kvm2("ext", ext_uri()),
        kvm2("ssh", f"qemu+ssh://mallory@127.0.0.1:{SSH_PORT}/system"),
        kvm2("tcp", f"qemu+tcp://127.0.0.1:{TCP_PORT}/system"),
        profile("podman", {"Name": "podman", "Driver": "podman", "Network": "podman"}),
        profile("docker", {"Name": "docker", "Driver": "docker", "Network": "bridge"}),
        # a profile named like root's kind network: Network defaults to the name
        profile("kind", {"Name": "kind", "Driver": "podman", "KubernetesConfig": {}}),
        none_driver("none"),
    ]
    for case in UNREADABLE:
        entries += unreadable(case)
    return entries


# ---------------------------------------------------------------------------------------
# Judging an outcome


def settings_json(outcome: Outcome, phase: str) -> dict[str, Any]:
    runs = getattr(outcome, phase).runs
    run = next(r for r in runs if tuple(r.argv) == SETTINGS_JSON)
    assert run.returncode == 0, f"{phase}: settings exit {run.returncode}: {run.stderr}"
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def preset_origin(env_output: str) -> str:
    """The line of `settings --format env` saying what PRESET=auto found."""
    lines = [line for line in env_output.splitlines() if line.startswith("# PRESET=auto:")]
    assert len(lines) == 1, env_output
    return lines[0]


def check_baseline(outcome: Outcome, scene: Scene) -> None:
    """The run without mallory's files is sound (else the comparison proves nothing)."""
    base = outcome.baseline
    for run in base.runs:
        cmd = " ".join(run.argv)
        assert run.returncode is not None, f"baseline {cmd}: killed after the timeout"
        assert run.elapsed < FAST, f"baseline {cmd}: {run.elapsed:.1f} s"
        if run.argv[0] == "settings":
            assert run.returncode == 0, f"baseline {cmd}: exit {run.returncode}: {run.stderr}"
    assert base.marker is None and base.connections == [], (base.marker, base.connections)
    wanted = {e.path: (e.uid, e.kind if e.kind != "sparse" else "file") for e in scene.hostile}
    placed = {path: (uid, kind) for path, uid, kind in outcome.placed}
    assert placed == wanted, "the hostile files were not made as intended"


def problems(outcome: Outcome) -> list[str]:
    """What mallory's files changed, one line (or diff) each."""
    found: list[str] = []
    hostile = outcome.hostile
    if hostile.marker is not None:
        found.append(f"{HOME}/evil.sh was executed, as uid {hostile.marker.strip()}")
    if hostile.connections:
        found.append(f"connections were made to 127.0.0.1 ports {sorted(hostile.connections)}")
    for base, run in zip(outcome.baseline.runs, hostile.runs, strict=True):
        cmd = " ".join(run.argv)
        if run.returncode is None:
            found.append(f"{cmd}: hung, killed after {run.elapsed:.0f} s")
            continue
        if run.elapsed >= FAST:
            found.append(f"{cmd}: took {run.elapsed:.1f} s (limit {FAST:.0f} s)")
        if run.returncode != base.returncode:
            last = run.stderr.strip().splitlines()[-1:] or [""]
            found.append(
                f"{cmd}: exit {run.returncode} (without the files: {base.returncode}): {last[0]}"
            )
        elif run.stdout != base.stdout:
            diff = difflib.unified_diff(
                base.stdout.splitlines(), run.stdout.splitlines(), "without", "with", n=0
            )
            found.append(f"{cmd}: output changed:\n" + "\n".join(list(diff)[2:]))
    return found


def judge(outcome: Outcome, scene: Scene, specific: list[str] | None = None) -> None:
    """No problem: neither the case's own (`specific`) nor any of `problems`."""
    check_baseline(outcome, scene)
    found = [*(specific or []), *problems(outcome)]
    if outcome.docker_calls:
        calls = "; ".join(" ".join(c) for c in outcome.docker_calls)
        found += [f"(the docker stand-in was asked: {calls})"] if found else []
    assert not found, "mallory's files changed root's run:\n" + "\n".join(found)


def run(tmp_path: Path, scene: Scene) -> Outcome:
    return run_scene(scene, tmp_path / "work")


# ---------------------------------------------------------------------------------------
# The cases


def test_kvm2_ext_uri_runs_nothing_of_the_user(tmp_path: Path) -> None:
    """KVMQemuURI qemu+ext:///system?command=... would make root's virsh run her program."""
    need("virsh")
    marker = work(tmp_path) / "evil-ran"
    scene = Scene(hostile=[evil(marker), kvm2("x", ext_uri())], marker=str(marker))
    outcome = run(tmp_path, scene)
    judge(outcome, scene)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("transport", "uri", "port"),
    [
        ("ssh", f"qemu+ssh://mallory@127.0.0.1:{SSH_PORT}/system", SSH_PORT),
        ("tcp", f"qemu+tcp://127.0.0.1:{TCP_PORT}/system", TCP_PORT),
    ],
    ids=["ssh", "tcp"],
)
def test_kvm2_remote_uri_connects_nowhere(
    tmp_path: Path, transport: str, uri: str, port: int
) -> None:
    """A remote libvirt URI would make root connect (as root, with root's ssh keys) where
    she says; only a listener on 127.0.0.1 in a private netns is there to be reached."""
    need("virsh", *(["ssh"] if transport == "ssh" else []))
    scene = Scene(hostile=[kvm2(transport, uri)], listen=[port])
    judge(run(tmp_path, scene), scene)


def test_podman_default_network_is_no_node_network(tmp_path: Path) -> None:
    """Driver podman, Network podman: Podman's default network is not a cluster's."""
    need("podman")
    inspect = ("podman", "network", "inspect", "podman")
    scene = Scene(
        hostile=[profile("x", {"Name": "x", "Driver": "podman", "Network": "podman"})],
        probes=[inspect],
    )
    outcome = run(tmp_path, scene)
    answer = outcome.facts[" ".join(inspect)]
    assert answer.startswith("exit 0\n"), f"Podman's default network is missing: {answer}"
    (default,) = json.loads(answer.split("\n", 1)[1])
    subnets = [s["subnet"] for s in default["subnets"]]
    assert subnets, default
    check_baseline(outcome, scene)
    hostile = settings_json(outcome, "hostile")
    env = next(r for r in outcome.hostile.runs if tuple(r.argv) == SETTINGS_ENV).stdout
    specific = [
        f"NODE_NETWORKS gained Podman's default network {s}: {hostile['NODE_NETWORKS']!r}"
        for s in subnets
        if s in hostile["NODE_NETWORKS"]
    ]
    if hostile["HOST_PORTS"] != "6443":
        specific.append(f"HOST_PORTS became {hostile['HOST_PORTS']!r} (kubeadm's: '6443')")
    if "minikube" in preset_origin(env):
        specific.append(f"the preset followed her profile: {preset_origin(env)}")
    judge(outcome, scene, specific)


def test_docker_default_bridge_is_no_node_network(tmp_path: Path) -> None:
    """Driver docker, Network bridge: Docker's default bridge is not a cluster's."""
    need()
    calls = str(tmp_path / "work" / "ns" / "docker-calls.jsonl")
    inspect = ("docker", "network", "inspect", "bridge")
    scene = Scene(
        hostile=[profile("x", {"Name": "x", "Driver": "docker", "Network": "bridge"})],
        root_files=[fake_docker(calls)],
        probes=[inspect],
    )
    outcome = run(tmp_path, scene)
    answer = outcome.facts[" ".join(inspect)]
    assert answer.startswith("exit 0\n"), answer
    (bridge,) = json.loads(answer.split("\n", 1)[1])
    assert bridge["IPAM"]["Config"][0]["Subnet"] == "172.17.0.0/16", "the stand-in is not found"
    check_baseline(outcome, scene)
    nodes = settings_json(outcome, "hostile")["NODE_NETWORKS"]
    specific = (
        [f"NODE_NETWORKS gained 172.17.0.0/16: {nodes!r}"] if "172.17.0.0/16" in nodes else []
    )
    judge(outcome, scene, specific)


def test_driver_none_cannot_choose_cluster_ranges(tmp_path: Path) -> None:
    """Driver none: her pod-network-cidr and ServiceCIDR are not root's ranges."""
    need()
    scene = Scene(hostile=[none_driver("x")])
    outcome = run(tmp_path, scene)
    check_baseline(outcome, scene)
    hostile = settings_json(outcome, "hostile")
    specific = [
        f"{key} gained her {net}: {hostile[key]!r}"
        for key, net in (("POD_CIDRS", "10.99.0.0/16"), ("SERVICE_CIDRS", "10.111.0.0/16"))
        if net in hostile[key].split()
    ]
    judge(outcome, scene, specific)


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_profile_changes_nothing(tmp_path: Path, case: str) -> None:
    """A FIFO, /dev/zero, 100 MB, broken JSON, a symlinked profiles directory: root's run
    finishes fast, exits 0 and exempts what it exempts without them."""
    need("podman")
    scene = Scene(
        hostile=unreadable(case),
        root_files=elsewhere() if case == "symlinked_profiles" else [],
    )
    judge(run(tmp_path, scene), scene)


def every_hostile_scene(tmp_path: Path, commands: list[tuple[str, ...]]) -> Scene:
    marker = work(tmp_path) / "evil-ran"
    calls = str(tmp_path / "work" / "ns" / "docker-calls.jsonl")
    return Scene(
        hostile=every_hostile(marker),
        root_files=[*KUBEADM, fake_docker(calls), *elsewhere()],
        podman_networks=[["kind"]],
        listen=[SSH_PORT, TCP_PORT],
        commands=commands,
        marker=str(marker),
        probes=[("podman", "network", "inspect", "kind")],
    )


def test_root_clusters_stay_detected_beside_every_hostile_profile(tmp_path: Path) -> None:
    """Root's kubeadm control plane and its kind network (a real Podman network named
    `kind`) are found, with every hostile file of this module present at once."""
    need("virsh", "ssh", "podman")
    scene = every_hostile_scene(tmp_path, [SETTINGS_JSON, SETTINGS_ENV])
    outcome = run(tmp_path, scene)
    answer = outcome.facts["podman network inspect kind"]
    assert answer.startswith("exit 0\n"), answer
    (kind,) = json.loads(answer.split("\n", 1)[1])
    kind_net = f"{kind['subnets'][0]['subnet']}@{kind['network_interface']}"
    check_baseline(outcome, scene)
    base = settings_json(outcome, "baseline")
    assert KUBEADM_SERVICES in base["SERVICE_CIDRS"].split(), base
    assert KUBEADM_PODS in base["POD_CIDRS"].split(), base
    assert kind_net in base["NODE_NETWORKS"].split(), base
    judge(outcome, scene)  # the same with her files: root's clusters still there


def test_doctor_finishes_with_every_hostile_profile(tmp_path: Path) -> None:
    """`doctor` (as root) is not stalled by her files either: same exit, within FAST."""
    need("virsh", "ssh", "podman")
    scene = every_hostile_scene(tmp_path, [DOCTOR])
    outcome = run(tmp_path, scene)
    check_baseline(outcome, scene)
    base, hostile = outcome.baseline.runs[0], outcome.hostile.runs[0]
    assert hostile.returncode is not None, f"doctor hung, killed after {hostile.elapsed:.0f} s"
    assert hostile.elapsed < FAST, f"doctor took {hostile.elapsed:.1f} s"
    assert hostile.returncode == base.returncode, (base.returncode, hostile.stderr[-2000:])
    assert outcome.hostile.marker is None, f"evil.sh ran as uid {outcome.hostile.marker}"
    assert outcome.hostile.connections == [], outcome.hostile.connections


def test_roots_minikube_network_is_found_by_its_labels(tmp_path: Path) -> None:
    """What replaces the profiles: a Podman network with the labels minikube's podman
    driver sets (pkg/drivers/kic/oci/network_create.go, minikube v1.34) is minikube's
    node network on its own bridge, and PRESET=auto says minikube; her profile naming
    Podman's default network beside it changes nothing."""
    need("podman")
    labels = ["--label", "created_by.minikube.sigs.k8s.io=true"]
    labels += ["--label", "name.minikube.sigs.k8s.io=mk"]
    inspect = ("podman", "network", "inspect", "mk")
    scene = Scene(
        hostile=[profile("x", {"Name": "x", "Driver": "podman", "Network": "podman"})],
        podman_networks=[["mk", *labels], ["plain"]],
        probes=[inspect],
    )
    outcome = run(tmp_path, scene)
    answer = outcome.facts[" ".join(inspect)]
    assert answer.startswith("exit 0\n"), answer
    (mk,) = json.loads(answer.split("\n", 1)[1])
    node = f"{mk['subnets'][0]['subnet']}@{mk['network_interface']}"
    check_baseline(outcome, scene)
    base = settings_json(outcome, "baseline")
    assert base["NODE_NETWORKS"].split() == [node], base
    assert base["HOST_PORTS"] == "none", base  # minikube's API is in its node
    env = next(r for r in outcome.baseline.runs if tuple(r.argv) == SETTINGS_ENV).stdout
    assert "found minikube" in preset_origin(env), preset_origin(env)
    judge(outcome, scene)
