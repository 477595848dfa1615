"""A hostile local user against root's cluster detection (issue 20), for
tests/kernel/test_hostile_user.py.

`run_scene` runs the real CLI as root twice in one private machine made with
`unshare --mount --net --pid --fork --kill-child --mount-proc`: once while
/home/mallory (uid 4242, mode 0755, on a fresh tmpfs /home) is empty ("baseline"),
then again after mallory's files were put there ("hostile"). Both runs see the same
root-controlled state: overlays on /etc and /usr/local/bin (a kubeadm manifest, a fake
engine CLI, Podman's configuration) and Podman networks made in that private state.
Everything dies with the namespaces: mounts, listeners, the processes still running
(the PID namespace's init is killed with `unshare`), Podman's networks (their
configuration lives in the /etc overlay; they are also removed explicitly).

The CLI runs with a fixed environment: the PATH the fixed detection uses for engines
and no other variable that selects anything, so that today's code and the fixed code
find the same programs (a fake is put on that PATH, never found through an inherited
one). It runs under `prlimit --data`: a detection that reads /dev/zero fails with
MemoryError instead of eating the shared machine's memory.

Inside the namespaces this module runs as `python -m tests.kernel.hostile SPEC.json`;
the JSON results go to the file the spec names.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import CLI, ROOT

# The PATH the fixed detection runs engines with (and the one the CLI gets here).
FIXED_PATH = (
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/current-system/sw/bin"
)
CLI_ENV = {"PATH": FIXED_PATH, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT / "src")}
MALLORY_UID = 4242
HOME = "/home/mallory"
PROFILES = f"{HOME}/.minikube/profiles"
COMMAND_TIMEOUT = 20.0  # per CLI run; a run still going then is killed and reported
DATA_LIMIT = 1 << 30  # bytes of heap for the CLI and what it starts (prlimit --data)
OVERLAID = ("/etc", "/usr/local/bin")  # writable copies inside the namespace
PODMAN_STATE = ("/var/lib/containers", "/run/containers", "/run/libpod", "/var/lib/cni")
SETTINGS_JSON = ("settings", "--settings", "none", "--format", "json")
SETTINGS_ENV = ("settings", "--settings", "none", "--format", "env")
DOCTOR = ("doctor", "--settings", "none")


@dataclass(frozen=True)
class Entry:
    """A file to make: `kind` file | fifo | symlink | sparse | dir."""

    path: str
    kind: str = "file"
    content: str = ""
    target: str = ""  # symlink
    size: int = 0  # sparse
    mode: int = 0o644
    uid: int = MALLORY_UID


def mallory_file(path: str, content: str, mode: int = 0o644) -> Entry:
    return Entry(path, "file", content=content, mode=mode)


def profile(name: str, config: dict[str, Any]) -> Entry:
    """~mallory/.minikube/profiles/NAME/config.json with this content."""
    return mallory_file(f"{PROFILES}/{name}/config.json", json.dumps(config, indent=2))


@dataclass
class Scene:
    hostile: list[Entry]  # mallory's files, made between the two phases
    root_files: list[Entry] = field(default_factory=list)  # under OVERLAID, before both
    # `podman network create` arguments: the name, then options (e.g. --label K=V)
    podman_networks: list[list[str]] = field(default_factory=list)
    listen: list[int] = field(default_factory=list)  # TCP ports on 127.0.0.1 (private netns)
    commands: list[tuple[str, ...]] = field(default_factory=lambda: [SETTINGS_JSON, SETTINGS_ENV])
    marker: str = ""  # a path evil code would create; reported per phase
    probes: list[tuple[str, ...]] = field(default_factory=list)  # root's commands, for facts


@dataclass
class Run:
    argv: list[str]
    returncode: int | None  # None: killed after COMMAND_TIMEOUT
    stdout: str
    stderr: str
    elapsed: float


@dataclass
class Phase:
    runs: list[Run]
    connections: list[int]  # ports that accepted a connection during this phase
    marker: str | None  # the marker's content, None when absent


@dataclass
class Outcome:
    baseline: Phase
    hostile: Phase
    placed: list[tuple[str, int, str]]  # (path, owner uid, file type) of mallory's files
    facts: dict[str, str]  # probe command -> its output, run as root in the namespace
    docker_calls: list[list[str]]  # what the fake docker (if any) was asked


# ---------------------------------------------------------------------------------------
# Outside: build the spec, run the namespaces, read the results


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t, path=FIXED_PATH) is None]


def run_scene(scene: Scene, work: Path) -> Outcome:
    """Run the scene in fresh namespaces; `work` is a root-only directory of the test."""
    need = missing_tools("unshare", "prlimit", "mount", "ip")
    assert not need, f"the hostile-user tests need {need} (util-linux, iproute2)"
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "scratch": str(work / "ns"),
        "out": str(work / "result.json"),
        "hostile": [asdict(e) for e in scene.hostile],
        "root_files": [asdict(e) for e in scene.root_files],
        "podman_networks": scene.podman_networks,
        "listen": scene.listen,
        "commands": [list(c) for c in scene.commands],
        "marker": scene.marker,
        "probes": [list(p) for p in scene.probes],
    }
    (work / "ns").mkdir(exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    argv += ["--propagation", "private", sys.executable, "-m", "tests.kernel.hostile"]
    budget = 60 + 2 * len(scene.commands) * (COMMAND_TIMEOUT + 5)
    done = subprocess.run(
        [*argv, str(spec_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=budget,
        check=False,
        start_new_session=True,
    )
    assert done.returncode == 0, f"the namespace driver failed:\n{done.stderr[-4000:]}"
    data = json.loads((work / "result.json").read_text())
    return Outcome(
        baseline=_phase(data["baseline"]),
        hostile=_phase(data["hostile"]),
        placed=[(p, u, t) for p, u, t in data["placed"]],
        facts=data["facts"],
        docker_calls=data["docker_calls"],
    )


def _phase(data: dict[str, Any]) -> Phase:
    return Phase([Run(**r) for r in data["runs"]], data["connections"], data["marker"])


# ---------------------------------------------------------------------------------------
# Inside the namespaces


def _sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _setup(scratch: Path) -> None:
    """Private copies of everything the scene writes or Podman keeps state in."""
    _sh("mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(scratch))
    for directory in OVERLAID:
        name = directory.strip("/").replace("/", "_")
        upper, workdir = scratch / f"{name}.upper", scratch / f"{name}.work"
        upper.mkdir()
        workdir.mkdir()
        options = f"lowerdir={directory},upperdir={upper},workdir={workdir}"
        _sh("mount", "-t", "overlay", "overlay", "-o", options, directory)
    for directory in PODMAN_STATE:
        if os.path.isdir(directory):
            _sh("mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", directory)
    podman = scratch / "podman"
    # Root's Podman configuration in the /etc overlay (no CONTAINERS_CONF: the fixed
    # detection runs engines with a minimal environment): its state under the scratch
    # tmpfs, the networks in /etc/cni/net.d as on the machine (Podman's default network
    # `podman` included).
    Path("/etc/containers").mkdir(exist_ok=True)
    Path("/etc/containers/containers.conf").write_text(
        f'[engine]\nruntime = "runc"\ntmp_dir = "{podman / "tmp"}"\n'
    )
    Path("/etc/containers/storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{podman / "graph"}"\n'
        f'runroot = "{podman / "run"}"\n'
    )
    _sh("ip", "link", "set", "lo", "up")
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/home")
    os.mkdir(HOME, 0o755)
    os.chown(HOME, MALLORY_UID, MALLORY_UID)


def _make(entry: dict[str, Any]) -> None:
    """One file, its parent directories made as its owner would (0755)."""
    path = Path(entry["path"])
    uid = entry["uid"]
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        os.chown(directory, uid, uid)
    kind = entry["kind"]
    if os.path.lexists(path):  # over a file of the machine (in an overlay): replace it
        path.unlink()
    if kind == "file":
        path.write_text(entry["content"])
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(entry["target"])
    elif kind == "sparse":
        with path.open("wb") as f:
            f.truncate(entry["size"])
    elif kind == "dir":
        path.mkdir()
    else:
        raise ValueError(f"unknown entry kind {kind!r}")
    os.lchown(path, uid, uid)
    if kind != "symlink":
        os.chmod(path, entry["mode"])


def _file_type(path: str) -> str:
    mode = os.lstat(path).st_mode
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
    ):
        if test(mode):
            return name
    return "other"


class _Listeners:
    """TCP listeners on 127.0.0.1 in the private netns; each accepted connection is
    recorded and closed at once (so a client fails fast instead of waiting)."""

    def __init__(self, ports: list[int]) -> None:
        self.accepted: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(16)
            sock.settimeout(0.2)
            thread = threading.Thread(target=self._serve, args=(sock, port), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.accepted.append(port)
            conn.close()
        sock.close()

    def take(self) -> list[int]:
        time.sleep(0.3)  # a connection the CLI's last child made is accepted by now
        with self._lock:
            out, self.accepted = self.accepted, []
        return out

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


def _run_cli(args: list[str]) -> dict[str, Any]:
    argv = ["prlimit", f"--data={DATA_LIMIT}", *CLI, *args]
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=CLI_ENV,
            cwd="/",
            timeout=COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        code: int | None = done.returncode
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {
        "argv": args,
        "returncode": code,
        "stdout": out,
        "stderr": err[-3000:],
        "elapsed": time.monotonic() - start,
    }


def _marker(path: str) -> str | None:
    try:
        return Path(path).read_text() if path else None
    except FileNotFoundError:
        return None


def _phase_run(spec: dict[str, Any], listeners: _Listeners) -> dict[str, Any]:
    runs = [_run_cli(args) for args in spec["commands"]]
    return {"runs": runs, "connections": listeners.take(), "marker": _marker(spec["marker"])}


def _probe(argv: list[str]) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, env=CLI_ENV, timeout=30, check=False
    )
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    scratch = Path(spec["scratch"])
    _setup(scratch)
    for entry in spec["root_files"]:
        _make(entry)
    made = []
    try:
        for name, *options in spec["podman_networks"]:
            _sh("podman", "network", "create", *options, name)
            made.append(name)
        facts = {" ".join(p): _probe(p) for p in spec["probes"]}
        listeners = _Listeners(spec["listen"])
        try:
            baseline = _phase_run(spec, listeners)
            for entry in spec["hostile"]:
                _make(entry)
            placed = [
                (e["path"], os.lstat(e["path"]).st_uid, _file_type(e["path"]))
                for e in spec["hostile"]
            ]
            hostile = _phase_run(spec, listeners)
        finally:
            listeners.stop()
    finally:
        for name in made:
            subprocess.run(
                ["podman", "network", "rm", "-f", name], capture_output=True, check=False
            )
    log = scratch / "docker-calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    result = {
        "baseline": baseline,
        "hostile": hostile,
        "placed": placed,
        "facts": facts,
        "docker_calls": calls,
    }
    Path(spec["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------
# A Docker CLI stand-in (root-owned, put over /usr/local/bin/docker in the namespace)

# Docker's three default networks as the Engine API v1.43 (Docker 24, moby's
# api/types NetworkResource) returns them: the default bridge 172.17.0.0/16 on docker0,
# no labels. `network ls --format '{{json .}}'` renders docker/cli 24's networkContext
# (ID, Name, Driver, Scope, IPv6, Internal, Labels as "k=v,..." and CreatedAt as Go's
# time.Time String()). Written for this test from the API's field list; no Docker output
# is copied.
FAKE_DOCKER = r'''#!/usr/bin/python3
"""A Docker CLI stand-in with a daemon holding only Docker's default networks."""
import json
import re
import sys

LOG = @LOG@
CREATED = "2025-01-06T09:30:12.345678901Z"
CREATED_LS = "2025-01-06 09:30:12.345678901 +0000 UTC"


def network(name, ident, driver, config, options):
    return {
        "Name": name,
        "Id": ident,
        "Created": CREATED,
        "Scope": "local",
        "Driver": driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": config},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": options,
        "Labels": {},
    }


NETWORKS = [
    network(
        "bridge",
        "5f1d8c9e2b7a4c3d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d",
        "bridge",
        [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}],
        {
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            "com.docker.network.bridge.name": "docker0",
            "com.docker.network.driver.mtu": "1500",
        },
    ),
    network(
        "host", "8a3e6b1c0d9f4e2a7b5c3d1e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a",
        "host", [], {},
    ),
    network(
        "none", "c7b2e9d4a1f84b6c0e3d5a7f9b1c3e5d7f9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c",
        "null", [], {},
    ),
]


def find(word):
    for net in NETWORKS:
        if word in (net["Name"], net["Id"]) or (len(word) >= 3 and net["Id"].startswith(word)):
            return net
    return None


def ls_row(net, trunc):
    labels = ",".join(f"{k}={v}" for k, v in net["Labels"].items())
    return {
        "CreatedAt": CREATED_LS,
        "Driver": net["Driver"],
        "ID": net["Id"][:12] if trunc else net["Id"],
        "IPv6": "false",
        "Internal": "false",
        "Labels": labels,
        "Name": net["Name"],
        "Scope": net["Scope"],
    }


def keep(net, filters):
    for key, value in filters:
        if key == "label":
            k, eq, v = value.partition("=")
            if k not in net["Labels"] or (eq and net["Labels"][k] != v):
                return False
        elif key == "name" and value not in net["Name"]:
            return False
        elif key == "driver" and value != net["Driver"]:
            return False
        elif key == "id" and not net["Id"].startswith(value):
            return False
    return True


FIELD = re.compile(r"{{\s*(json\s+)?\.(\w*)\s*}}")  # {{.Name}}, {{json .Labels}}, {{json .}}


def render(row, template):
    """Go templates of the simplest kinds; others fail as a Docker CLI stand-in should
    not guess (the call is logged)."""
    if template == "json":
        return json.dumps(row, separators=(",", ":"))
    if not FIELD.search(template) or FIELD.sub("", template).count("{{"):
        raise SystemExit(f"docker (test stand-in): template {template!r} not supported")

    def value(m):
        item = row.get(m.group(2), "") if m.group(2) else row
        return json.dumps(item, separators=(",", ":")) if m.group(1) else str(item)

    return FIELD.sub(value, template).replace("\\t", "\t")


def options(args, with_value):
    flags, words = {}, []
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if name in with_value:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            flags.setdefault(with_value[name], []).append(value)
        elif word.startswith("-"):
            flags.setdefault(word, []).append("")
        else:
            words.append(word)
        i += 1
    return flags, words


def main(argv):
    with open(LOG, "a") as log:
        log.write(json.dumps(argv) + "\n")
    if argv[:2] == ["network", "inspect"]:
        flags, names = options(argv[2:], {"-f": "format", "--format": "format"})
        found = [find(n) for n in names]
        nets = [n for n in found if n]
        template = flags.get("format", [""])[-1]
        if template:
            for net in nets:
                print(render(net, template))
        else:
            print(json.dumps(nets, indent=4))
        for name, net in zip(names, found):
            if net is None:
                print(f"Error response from daemon: network {name} not found", file=sys.stderr)
        return 0 if all(found) and names else 1
    if argv[:2] in (["network", "ls"], ["network", "list"]):
        flags, _ = options(argv[2:], {"-f": "filter", "--filter": "filter", "--format": "format"})
        filters = [tuple(f.partition("=")[::2]) for f in flags.get("filter", [])]
        trunc = "--no-trunc" not in flags
        rows = [ls_row(n, trunc) for n in NETWORKS if keep(n, filters)]
        if "-q" in flags or "--quiet" in flags:
            for row in rows:
                print(row["ID"])
            return 0
        template = flags.get("format", ["table"])[-1]
        if template.startswith("table"):
            print("NETWORK ID     NAME      DRIVER    SCOPE")
            for row in rows:
                print(f"{row['ID'][:12]}   {row['Name']:<9} {row['Driver']:<9} local")
            return 0
        for row in rows:
            print(render(row, template))
        return 0
    print(f"docker (test stand-in): {' '.join(argv)}: not supported", file=sys.stderr)
    return 1


sys.exit(main(sys.argv[1:]))
'''


def fake_docker(log: str) -> Entry:
    """The stand-in over /usr/local/bin/docker, root-owned; its calls logged to `log`."""
    text = FAKE_DOCKER.replace("@LOG@", repr(log))
    return Entry("/usr/local/bin/docker", "file", content=text, mode=0o755, uid=0)


if __name__ == "__main__":
    main(sys.argv[1])
