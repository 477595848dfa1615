"""Clusters whose nodes are containers or VMs, in the lab's machine: kind on a real
Podman network and node container (`KindNode`), minikube's kvm2 shape by hand
(`MinikubeVm`), and the clean-up of podman state a killed run left (`purge_stale`).

What is real: Debian's podman 4.3 (CNI backend) makes the network and runs the "node"
container, with the commands kind's podman provider uses
(`podman network create -d=bridge --ipv6 --subnet <ULA> NAME`, then a container on it
with `--publish 127.0.0.1:<random port>:6443` for the API server and
`--publish 0.0.0.0:80:80` for an `extraPortMappings` entry). Podman runs in the lab
machine's network namespace (`nsenter --net`), so its CNI plugins (bridge with ipMasq,
portmap, firewall, tuning; Debian's containernetworking-plugins) build the
`cni-podman<N>` bridge, the veth, the masquerade and the hostport DNATs there, with the
real iptables-nft, as they do in the root namespace of a machine running podman;
conmon holds the published ports' sockets there too. `root_namespace_state` lets the test show that
nothing lands in the machine's own namespace.

Only `nsenter --net`, not `ip netns exec`: the latter also gives podman a private mount
namespace, so the container's network namespace mount (/run/netns/netns-*) would be
invisible to the next podman command.

What is a stand-in: the node runs no Kubernetes. Its image is no image (no registry
here): `--rootfs` of a directory whose /usr is the machine's, read-only, running
`sleep infinity`. The node's processes are started from the machine inside the node's
network namespace (`ip netns attach`). Inside it, as kindnetd and kube-proxy lay out a
kind node: two pods on point-to-point veths (kindnet's ptp plugin: pod /32 addresses,
the gateway 10.244.0.1 on the node's end of each veth), a CoreDNS stand-in (the lab's
DNS responder) behind the ClusterIP 10.96.0.10, whose DNAT is kube-proxy's own
nftables-mode rules (`kube_proxy.py`; kind defaults to iptables mode, kubeProxyMode
nftables is one of its options), kindnetd's masquerade of pod traffic leaving
the node, an API server stand-in on :6443 and a web server (ingress) on :80, both the
lab's banner servers.

Podman's configuration (runc, ulimits, network backend `cni`) and all its state
(storage, run directory, network configuration directory) live under the lab's
temporary directory: nothing of /etc/containers, /etc/cni/net.d or /var/lib/containers
is used. Only host-local's IPAM directory /var/lib/cni/networks/<network> is global; it
is removed at teardown. Network and container names carry a random tag.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests import rootview

from . import kube_proxy
from .nsutil import (
    NETNS_DIR,
    LabError,
    Netns,
    create_namespaces,
    delete_namespaces,
    run,
    wait_ready,
)
from .topology import ANSWERS, Lab

NETWORK_PREFIX = "mak-kind-"
# kind's podman provider derives the network's IPv6 ULA /64 from a SHA-1 of its name;
# this is the one it makes for the network named "kind".
ULA_SUBNET = "fc00:f853:ccd:e793::/64"
NODE_API_PORT = 6443  # kube-apiserver in the node
NODE_WEB_PORT = 80  # an ingress controller's hostPort in the node
MAPPED_PORT = 80  # extraPortMappings: containerPort 80, hostPort 80 (kind's ingress docs)
POD_CIDR = "10.244.0.0/16"  # kind's networking.podSubnet default; this node has .0/24
POD_GW = "10.244.0.1"
CLIENT_POD = "10.244.0.2"
COREDNS_POD = "10.244.0.3"
SERVICE_CIDR = "10.96.0.0/16"  # kind's networking.serviceSubnet default
KUBE_DNS = "10.96.0.10"
CNI_PLUGINS = ("bridge", "host-local", "portmap", "firewall", "tuning")
CNI_DIR = Path("/usr/lib/cni")
IPAM_DIR = Path("/var/lib/cni/networks")


def unavailable() -> str | None:
    """Why podman cannot make the node here, or None."""
    missing = [tool for tool in ("podman", "runc", "nsenter") if shutil.which(tool) is None]
    if missing:
        hint = " (a docker client alone is not enough)" if shutil.which("docker") else ""
        return (
            f"the kind lab needs {', '.join(missing)}{hint}: apt-get install podman runc "
            "conmon util-linux containernetworking-plugins (.ci/apt/netlab.txt)"
        )
    plugins = [p for p in CNI_PLUGINS if not (CNI_DIR / p).is_file()]
    if plugins:
        return f"podman's CNI backend needs {', '.join(plugins)} in {CNI_DIR}"
    return None


def _podman_env(base: Path) -> dict[str, str]:
    return {
        "CONTAINERS_CONF": str(base / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
    }


def purge_stale(prefix: str) -> list[str]:
    """Remove the containers and networks of lab runs whose process is gone (killed
    before their teardown), with the podman configuration they left in their temporary
    directory; podman runs in that lab's machine namespace, or in an empty one if it is
    gone already, so that CNI's DEL never touches the namespace we run in."""
    removed: list[str] = []
    for conf in Path(tempfile.gettempdir()).glob(f"{prefix}*-*/podman/containers.conf"):
        lab_dir = conf.parent.parent
        uid = lab_dir.name.rsplit("-", 1)[0]  # <prefix><pid>-<tag>, as Lab names it
        pid = uid[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        env = {**os.environ, **_podman_env(conf.parent)}
        host = NETNS_DIR / f"{uid}-host"
        scratch = None
        if not host.exists():
            (scratch,) = create_namespaces([f"{uid}-purge"])
            host = scratch.path
        podman = ["nsenter", f"--net={host}", "podman"]
        try:
            subprocess.run([*podman, "rm", "-a", "-f", "-t", "0"], env=env, check=False,
                           capture_output=True, timeout=120)  # fmt: skip
            names = subprocess.run([*podman, "network", "ls", "--format", "{{.Name}}"],
                                   env=env, check=False, capture_output=True, text=True,
                                   timeout=60).stdout.split()  # fmt: skip
            for name in names:
                if name.startswith(NETWORK_PREFIX):
                    subprocess.run([*podman, "network", "rm", "-f", name], env=env,
                                   check=False, capture_output=True, timeout=60)  # fmt: skip
                    shutil.rmtree(IPAM_DIR / name, ignore_errors=True)
                    removed.append(name)
        finally:
            if scratch is not None:
                delete_namespaces([scratch])
        shutil.rmtree(lab_dir, ignore_errors=True)
    return removed


def _podman_config(base: Path) -> dict[str, str]:
    """containers.conf and storage.conf under `base`; the environment that selects them."""
    base.mkdir(parents=True, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 20000 if hard == resource.RLIM_INFINITY else min(20000, hard)
    env = _podman_env(base)
    conf, storage = Path(env["CONTAINERS_CONF"]), Path(env["CONTAINERS_STORAGE_CONF"])
    # crun cannot raise RLIMIT_NOFILE without CAP_SYS_RESOURCE and refuses cgroup v1
    # hybrids (shared/notes/machine.md): runc, and limits within the hard limit.
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'network_config_dir = "{base / "net.d"}"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        "stop_timeout = 1\n"
        f'tmp_dir = "{base / "run" / "libpod"}"\n'
    )
    storage.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{base / "storage"}"\n'
        f'runroot = "{base / "run" / "storage"}"\n'
    )
    return env


def _rootfs(path: Path) -> list[str]:
    """An image-less root: the machine's /usr read-only; the podman volume options."""
    volumes = ["-v", "/usr:/usr:ro"]
    for top in ("usr", "etc", "proc", "sys", "dev", "tmp", "run", "var"):
        (path / top).mkdir(parents=True, exist_ok=True)
    for top in ("bin", "sbin", "lib", "lib64"):
        real = Path("/", top)
        if real.is_symlink():  # merged /usr (Debian 12): bin -> usr/bin
            (path / top).symlink_to(os.readlink(real))
        elif real.is_dir():
            (path / top).mkdir()
            volumes += ["-v", f"{real}:{real}:ro"]
    return volumes


def _free_port(host: Netns) -> int:
    """A free port on the machine's 127.0.0.1, picked as kind picks its API port."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return host.call(pick)


RootState = tuple[str, frozenset[str]]


def root_namespace_state() -> RootState:
    """The ruleset and interface names of the namespace this process runs in (the real
    machine's root namespace when the tests run there)."""
    ruleset = run(["nft", "list", "ruleset"]).stdout
    links = run(["ip", "-o", "link", "show"]).stdout
    names = frozenset(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    return ruleset, names


def root_namespace_changes(before: RootState, node: KindNode) -> list[str]:
    """What of the node's network showed up in this process's own namespace: new
    bridges or veths, rules naming the node, its subnets or portmap's chains."""
    ruleset, names = root_namespace_state()
    leaks = sorted(
        f"interface {n}" for n in names - before[1] if n.startswith(("cni-podman", "veth"))
    )
    for text in (node.node_ip, *node.subnets, "CNI-DN-", f":{node.host_api_port}"):
        if text in ruleset and text not in before[0]:
            leaks.append(f"ruleset mentions {text}")
    return leaks


@dataclass
class KindNode:
    """The network, the node container and what runs in it; `build`, then `destroy`."""

    lab: Lab
    role: str = "kindnode"
    api_ident: str = "kind-apiserver"
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    env: dict[str, str] = field(default_factory=dict)
    host_api_port: int = 0  # on the machine's 127.0.0.1
    api_port: int = NODE_API_PORT  # in the node
    node_ip: str = ""
    node_ip6: str = ""
    bridge: str = ""  # the network's interface on the machine (cni-podmanN)
    subnets: tuple[str, ...] = ()
    gateway: str = ""  # the bridge's IPv4 address on the machine
    created: list[str] = field(default_factory=list)  # what destroy must remove

    @property
    def network(self) -> str:
        return f"{NETWORK_PREFIX}{self.tag}"

    @property
    def container(self) -> str:
        return f"{self.network}-control-plane"  # kind's node name: <cluster>-control-plane

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """podman in the machine's network namespace (and the caller's mount namespace)."""
        argv = ["nsenter", f"--net={self.lab['host'].path}", "podman", *args]
        env = {**os.environ, **self.env}
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=120
        )
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def build(self) -> None:
        lab = self.lab
        self.env = _podman_config(lab.tmp / "podman")
        # kind's createNetwork: a bridge network, IPv6 on with its ULA subnet; podman
        # adds an IPv4 subnet from its pool (10.89.0.0/24 first).
        self.podman(
            "network", "create", "-d=bridge", "--ipv6", "--subnet", ULA_SUBNET, self.network
        )
        self.created.append("network")
        info = json.loads(self.podman("network", "inspect", self.network).stdout)[0]
        self.bridge = str(info["network_interface"])
        self.subnets = tuple(str(s["subnet"]) for s in info["subnets"])
        self.gateway = next(str(s["gateway"]) for s in info["subnets"] if "." in s["subnet"])
        self.host_api_port = _free_port(lab["host"])
        volumes = _rootfs(lab.tmp / "kind-rootfs")
        self.created.append("container")
        self.podman(
            "run", "-d", "--name", self.container, "--hostname", self.container,
            "--network", self.network,
            "--label", f"io.x-k8s.kind.cluster={self.network}",
            "--label", "io.x-k8s.kind.role=control-plane",
            "--publish", f"127.0.0.1:{self.host_api_port}:{NODE_API_PORT}/tcp",
            "--publish", f"0.0.0.0:{MAPPED_PORT}:{NODE_WEB_PORT}/tcp",
            *volumes, "--rootfs", str(lab.tmp / "kind-rootfs"), "sleep", "infinity",
        )  # fmt: skip
        state = json.loads(self.podman("inspect", self.container).stdout)[0]
        pid = int(state["State"]["Pid"])
        addresses = state["NetworkSettings"]["Networks"][self.network]
        self.node_ip, self.node_ip6 = (
            str(addresses["IPAddress"]),
            str(addresses["GlobalIPv6Address"]),
        )
        node = Netns(f"{lab.uid}-{self.role}")
        run(["ip", "netns", "attach", node.name, str(pid)])
        lab.ns[self.role] = node
        self._pods(node)

    def _pods(self, node: Netns) -> None:
        """Two pods on ptp veths, kube-proxy's DNAT, kindnetd's masquerade, servers."""
        lab = self.lab
        pods = create_namespaces([f"{lab.uid}-kindclient", f"{lab.uid}-kinddns"])
        lab.ns["kindclient"], lab.ns["kinddns"] = pods
        node.sysctl({"net.ipv4.ip_forward": 1})
        lines = []
        for i, pod in enumerate(pods):
            lines += [
                f"link add veth{i} type veth peer name eth0 netns {pod.name}",
                f"addr add {POD_GW}/32 dev veth{i}",
                f"link set veth{i} up",
            ]
        node.ip("\n".join(lines) + "\n")
        for i, (pod, addr) in enumerate(zip(pods, (CLIENT_POD, COREDNS_POD), strict=True)):
            pod.ip(
                "link set lo up\nlink set eth0 up\n"
                f"addr add {addr}/32 dev eth0\n"
                f"route add {POD_GW} dev eth0 scope link\n"
                f"route add default via {POD_GW}\n"
            )
            node.ip(f"route add {addr}/32 dev veth{i}\n")
        dns = [(COREDNS_POD, 53)]
        services = [
            kube_proxy.Service("kube-system", "kube-dns", "dns", "udp", KUBE_DNS, 53, tuple(dns)),
            kube_proxy.Service(
                "kube-system", "kube-dns", "dns-tcp", "tcp", KUBE_DNS, 53, tuple(dns)
            ),
        ]
        node.nft(kube_proxy.nftables(services, [POD_CIDR], service_cidrs=[SERVICE_CIDR]))
        # kindnetd's masquerade agent: pod traffic to anything outside the pod range
        # leaves the node with the node's address.
        node.nft(
            "table ip kindnet {\n\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority 100; policy accept;\n"
            f"\t\tip saddr {POD_CIDR} ip daddr != {POD_CIDR} masquerade\n\t}}\n}}\n"
        )
        coredns = {"addrs": [COREDNS_POD], "ports": [53], "answers": ANSWERS["coredns"]}
        wait_ready(
            [
                node.spawn_agent(json.dumps({"ident": self.api_ident, "tcp": [["::", 6443]]})),
                node.spawn_agent(json.dumps({"ident": "kind-ingress", "tcp": [["::", 80]]})),
                lab["kinddns"].spawn_agent(json.dumps({"ident": "coredns", "dns": [coredns]})),
            ]
        )

    def generator(self) -> tuple[dict[str, str], dict[str, str]]:
        """Environment and settings for our CLI, as a kind user has them: the network's
        name (and podman's configuration, so that `podman network inspect` sees it)."""
        env = {"KIND_EXPERIMENTAL_PODMAN_NETWORK": self.network}
        settings = {"PRESET": "kind", "NODE_NETWORKS": "auto"}
        return env, {**settings, "POD_CIDRS": "", "SERVICE_CIDRS": "", "HOST_PORTS": ""}

    def root_view(self) -> list[str]:
        """argv prefix: root's Podman configured as this lab's (detection ignores
        CONTAINERS_CONF in its caller's environment; it asks root's Podman)."""
        return rootview.prefix(
            {
                "/etc/containers/containers.conf": Path(self.env["CONTAINERS_CONF"]),
                "/etc/containers/storage.conf": Path(self.env["CONTAINERS_STORAGE_CONF"]),
            }
        )

    def destroy(self) -> list[str]:
        """Remove the container and the network (each only if made); return errors."""
        errors = []
        if "container" in self.created:
            proc = self.podman("rm", "-f", "-t", "0", self.container, check=False)
            if proc.returncode != 0 and "no such container" not in proc.stderr:
                errors.append(f"podman rm {self.container}: {proc.stderr.strip()}")
        if "network" in self.created:
            proc = self.podman("network", "rm", "-f", self.network, check=False)
            if proc.returncode != 0:
                errors.append(f"podman network rm {self.network}: {proc.stderr.strip()}")
            shutil.rmtree(IPAM_DIR / self.network, ignore_errors=True)
        self.created.clear()
        return errors


@dataclass
class MinikubeVm:
    """minikube's kvm2 driver, by hand (no libvirt here): a "VM" namespace with one NIC on
    libvirt's `default` NAT network (virbr0, 192.168.122.0/24: its way out, masqueraded
    as libvirt's NAT rules do) and one on minikube's isolated network `mk-minikube`
    (virbr1, 192.168.39.0/24, minikube's first choice), where the host reaches the API
    server at 192.168.39.2:8443 (the kubeconfig's server). The NICs are veths named like
    libvirt's taps (vnet0, vnet1); no dnsmasq, DHCP or libvirt filter rules."""

    lab: Lab
    role: str = "kvmvm"
    bridge: str = "virbr1"
    node_ip: str = "192.168.39.2"
    gateway: str = "192.168.39.1"
    subnets: tuple[str, ...] = ("192.168.39.0/24",)
    nat_subnet: str = "192.168.122.0/24"
    nat_gateway: str = "192.168.122.1"
    nat_ip: str = "192.168.122.2"
    api_port: int = 8443  # minikube's --apiserver-port default, in the VM
    api_ident: str = "minikube-apiserver"

    def build(self) -> None:
        lab, host = self.lab, self.lab["host"]
        (vm,) = create_namespaces([f"{lab.uid}-{self.role}"])
        lab.ns[self.role] = vm
        lines = []
        for i, (gw, plen) in enumerate(((self.nat_gateway, 24), (self.gateway, 24))):
            lines += [
                f"link add virbr{i} type bridge",
                f"addr add {gw}/{plen} dev virbr{i}",
                f"link add vnet{i} type veth peer name eth{i} netns {vm.name}",
                f"link set vnet{i} master virbr{i} up",
                f"link set virbr{i} up",
            ]
        host.ip("\n".join(lines) + "\n")
        vm.ip(
            "link set lo up\nlink set eth0 up\nlink set eth1 up\n"
            f"addr add {self.nat_ip}/24 dev eth0\naddr add {self.node_ip}/24 dev eth1\n"
            f"route add default via {self.nat_gateway}\n"
        )
        net = self.nat_subnet
        host.nft(  # libvirt's NAT network: its masquerade (not its forward filter rules)
            "table ip netlab_libvirt {\n\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority 100; policy accept;\n"
            f"\t\tip saddr {net} ip daddr {{ 224.0.0.0/24, 255.255.255.255 }} return\n"
            f"\t\tip saddr {net} ip daddr != {net} masquerade\n\t}}\n}}\n"
        )
        spec = {"ident": self.api_ident, "tcp": [["::", self.api_port]]}
        wait_ready([vm.spawn_agent(json.dumps(spec))])

    def generator(self) -> tuple[dict[str, str], dict[str, str]]:
        """Environment and settings for our CLI: the node network given explicitly."""
        settings = {"PRESET": "minikube-kvm2", "NODE_NETWORKS": f"{self.subnets[0]}@{self.bridge}"}
        return {}, {**settings, "POD_CIDRS": "", "SERVICE_CIDRS": "", "HOST_PORTS": ""}

    def root_view(self) -> list[str]:
        return []  # nothing detected: the node network is given

    def destroy(self) -> list[str]:
        return []  # its namespace, bridges and veths go with the lab's namespaces
