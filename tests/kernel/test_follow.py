"""`follow` on the real kernel with Debian's podman: a kind network made after `apply`
is exempted without the user running anything, and gone again once it is removed.

Podman keeps its networks in its own configuration, not in a network namespace, so
`podman network create` (no container, no bridge yet) is what detection reads, as it
would be right after `kind create cluster` made the network. The namespace only holds
our table. Each test uses a network name of its own, through the variable kind itself
reads (KIND_EXPERIMENTAL_PODMAN_NETWORK), and removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Netns

pytestmark = pytest.mark.kernel

FALLBACK = {("172.18.0.0/16", "br-*")}  # the kind preset's, before the network exists


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Root's podman as detection runs it: its default configuration, not one another
    suite put in this process' environment (tests/install sets CONTAINERS_CONF, whose
    tmp_dir moves the events log that `podman events` reads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=check)


@pytest.fixture
def network() -> Iterator[str]:
    if not shutil.which("podman"):
        pytest.skip("needs podman (Debian's podman, .ci/apt/install.txt)")
    name = f"mak-follow-{uuid.uuid4().hex[:8]}"
    yield name
    podman("network", "rm", "-f", name, check=False)


def podman_network(name: str) -> tuple[str, str]:
    podman("network", "create", name)
    data = json.loads(podman("network", "inspect", name).stdout)[0]
    return data["subnets"][0]["subnet"], data["network_interface"]


def node_set(host: Netns) -> set[tuple[str, str]]:
    data = json.loads(host.nft_json("list set inet mullvad_allow_k8s node_v4"))
    out = set()
    for item in data["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            net, iface = elem["concat"]
            prefix = net["prefix"]
            out.add((f"{prefix['addr']}/{prefix['len']}", iface))
    return out


def cli(host: Netns, network: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return host.cli(
        *args,
        "--settings",
        "none",
        "--output",
        str(out),
        "--preset",
        "kind",
        KIND_EXPERIMENTAL_PODMAN_NETWORK=network,
    )


@pytest.fixture
def applied(
    netns_factory: Callable[[str], Netns], network: str, tmp_path: Path
) -> tuple[Netns, Path]:
    """A namespace with our table applied with PRESET=kind, before the network exists."""
    host = netns_factory("follow")
    out = tmp_path / "k.nft"
    assert cli(host, network, out, "apply").returncode == 0
    return host, out


def test_a_network_made_later_is_followed_and_its_removal_too(
    applied: tuple[Netns, Path], network: str
) -> None:
    host, out = applied
    assert node_set(host) == FALLBACK
    subnet, bridge = podman_network(network)
    result = cli(host, network, out, "follow", "--once")
    assert result.returncode == 0, result.stderr
    assert f"NODE_NETWORKS {subnet}@{bridge}: podman network inspect {network}" in result.stderr
    assert node_set(host) == {(subnet, bridge)}  # bound to its bridge: nothing else
    assert f"{subnet}@{bridge}" in out.read_text()
    podman("network", "rm", network)
    assert cli(host, network, out, "follow", "--once").returncode == 0
    assert node_set(host) == FALLBACK


def wait_for(host: Netns, wanted: set[tuple[str, str]], seconds: float) -> float:
    """Seconds until the table's node set is `wanted` (fails after `seconds`)."""
    start = time.monotonic()
    while node_set(host) != wanted and time.monotonic() - start < seconds:
        time.sleep(0.2)
    assert node_set(host) == wanted
    return time.monotonic() - start


def wait_for_child(pid: int, word: str, seconds: float) -> None:
    """Until a child of `pid` runs `podman ... word ...` (follow starts its event streams
    after its first round, which a loaded machine makes slow)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid and argv and argv[0].endswith(b"podman") and word.encode() in argv:
                return
        time.sleep(0.2)
    raise AssertionError(f"follow started no `podman {word}` within {seconds} s")


def test_follow_in_the_background_acts_on_podmans_events(
    applied: tuple[Netns, Path], network: str, tmp_path: Path
) -> None:
    """With an hour between polls, only Podman's own event stream (`podman events`, as
    follow runs it through the trust boundary) can make it re-read within seconds: a
    container created on a new network (Podman 4.3 announces no network creation; kind
    and minikube start their node right after), then the container and network removed.
    `podman create --rootfs` makes a real container (its events) without an image."""
    host, out = applied
    env = {"PYTHONPATH": str(ROOT / "src"), "KIND_EXPERIMENTAL_PODMAN_NETWORK": network}
    argv = ["ip", "netns", "exec", host.name, "env", *(f"{k}={v}" for k, v in env.items())]
    argv += [sys.executable, "-m", "mullvad_allow_k8s", "follow", "--interval", "3600"]
    argv += ["--settings", "none", "--output", str(out), "--preset", "kind"]
    follower = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    container = f"{network}-node"
    try:
        wait_for_child(follower.pid, "events", 60)  # its first round done, streams up
        time.sleep(2)  # podman events reads its log from now on: let it get there
        subnet, bridge = podman_network(network)
        podman(
            "create", "--network", network, "--name", container, "--rootfs", str(rootfs), "/true"
        )
        assert wait_for(host, {(subnet, bridge)}, 20) < 15
        podman("rm", container)
        podman("network", "rm", network)
        assert wait_for(host, FALLBACK, 20) < 15
    finally:
        podman("rm", "-f", container, check=False)
        follower.terminate()
        follower.wait(10)


def test_follow_never_loads_a_removed_table_nor_applies_broken_settings(
    applied: tuple[Netns, Path], network: str
) -> None:
    host, out = applied
    table = host.sh("nft list table inet mullvad_allow_k8s").stdout
    bad = cli(host, network, out, "follow", "--once", "--host-ports", "99999")
    assert bad.returncode == 0
    assert "warning: HOST_PORTS: '99999': ports must be 1-65535" in bad.stderr
    assert "the loaded table stays as it is" in bad.stderr
    assert host.sh("nft list table inet mullvad_allow_k8s").stdout == table
    assert host.cli("remove").returncode == 0
    podman_network(network)
    assert cli(host, network, out, "follow", "--once").returncode == 0
    assert "mullvad_allow_k8s" not in host.sh("nft list tables").stdout


def test_follow_without_anything_auto_has_nothing_to_do(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    host = netns_factory("follow")
    result = host.cli(
        "follow", "--settings", "none", "--preset", "k3s", "--pod-cidrs", "10.42.0.0/16",
        "--service-cidrs", "10.43.0.0/16", "--node-networks", "none",
    )  # fmt: skip
    assert result.returncode == 0
    assert "nothing is auto in the settings: nothing to follow" in result.stderr
