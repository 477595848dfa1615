"""Check, load, list and delete through libnftables, with the `nft` command as fallback.

subprocess and shutil are imported where used: `generate` never needs them, and its
start-up time is a benchmarked target.

Every change is one nft transaction, so the kernel applies all of it or none of it:
a failed load leaves whatever tables were there before.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Protocol

from . import marks

# "bindings" or "command"; default: the bindings where importable.
BACKEND_ENV = "MULLVAD_ALLOW_K8S_BACKEND"


class NftError(RuntimeError):
    """nft refused a ruleset or command; str() is nft's own message, trimmed."""


class Backend(Protocol):
    name: str

    def run(self, text: str, *, check: bool = False, json_out: bool = False) -> str: ...


class BindingsBackend:
    """libnftables through Debian's python3-nftables."""

    name = "libnftables"

    def __init__(self) -> None:
        import nftables  # noqa: PLC0415  (optional dependency, probed at run time)

        self._nft = nftables.Nftables()

    def run(self, text: str, *, check: bool = False, json_out: bool = False) -> str:
        self._nft.set_dry_run(check)
        self._nft.set_json_output(json_out)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_dry_run(False)
            self._nft.set_json_output(False)
        if rc != 0:
            raise NftError(_trim(err))
        return str(out)


class CommandBackend:
    """The `nft` program, for systems without the Python bindings."""

    name = "nft command"

    def __init__(self) -> None:
        from .detect import boundary  # noqa: PLC0415

        found = boundary.program("nft")  # root's nft, never one a caller's PATH names
        if not found:
            raise NftError("neither the nftables Python bindings nor the nft command is installed")
        self._nft = found

    def run(self, text: str, *, check: bool = False, json_out: bool = False) -> str:
        args = [self._nft]
        if check:
            args.append("--check")
        if json_out:
            # With --json, `-f` would parse its input as JSON: pass the command as words.
            args += ["--json", *text.split()]
        else:
            args += ["-f", "-"]
        import subprocess  # noqa: PLC0415

        from .detect import boundary  # noqa: PLC0415

        try:
            proc = subprocess.run(
                args,
                input=text,
                capture_output=True,
                text=True,
                check=False,
                env=boundary.environment(),
                timeout=boundary.COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise NftError(f"nft took longer than {boundary.COMMAND_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            raise NftError(_trim(proc.stderr))
        return proc.stdout


def _trim(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else "nft failed without a message"


def backend() -> Backend:
    """The bindings where importable (or forced by MULLVAD_ALLOW_K8S_BACKEND), else nft."""
    choice = os.environ.get(BACKEND_ENV, "")
    if choice != "command":
        try:
            return BindingsBackend()
        except ImportError:
            if choice == "bindings":
                raise NftError("the nftables Python bindings cannot be imported") from None
    return CommandBackend()


def can_admin_network() -> bool:
    """Root (or CAP_NET_ADMIN in this namespace): we can talk to this netns' nftables."""
    return os.geteuid() == 0


def check(text: str) -> None:
    """Ask the kernel whether `text` would load, without changing anything.

    Root checks against this network namespace; other users check in a private
    user+network namespace, which exercises the same kernel code.
    """
    if can_admin_network():
        backend().run(text, check=True)
        return
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    unshare = shutil.which("unshare")
    if not unshare:
        raise NftError("checking as non-root needs unshare(1) from util-linux")
    proc = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--net",
            sys.executable,
            "-m",
            "mullvad_allow_k8s.nft",
            "--check-stdin",
        ],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    if proc.returncode != 0:
        raise NftError(_trim(proc.stderr) if proc.stderr.strip() else "check failed")


def load(text: str) -> None:
    """Load in one transaction (the file's add+delete+define makes it a replacement)."""
    backend().run(text)


def table_list() -> list[dict[str, Any]]:
    """The tables of this netns as nft's JSON objects ({'family', 'name', ...})."""
    data = json.loads(backend().run("list tables", json_out=True) or "{}")
    return [item["table"] for item in data.get("nftables", []) if "table" in item]


def table_json(family: str, name: str) -> list[dict[str, Any]]:
    """One table's objects (chains, rules, sets) as nft JSON, [] if absent."""
    try:
        data = json.loads(backend().run(f"list table {family} {name}", json_out=True) or "{}")
    except NftError:
        return []
    return list(data.get("nftables", []))


def ruleset_json() -> list[dict[str, Any]]:
    """Every table's objects as nft JSON ([] when nftables cannot be asked)."""
    try:
        data = json.loads(backend().run("list ruleset", json_out=True) or "{}")
    except NftError:
        return []
    return list(data.get("nftables", []))


def table_text(family: str, name: str) -> str:
    """A table as nft lists it ("" when it cannot be listed)."""
    try:
        return backend().run(f"list table {family} {name}")
    except NftError:
        return ""


def table_comment(family: str, name: str) -> str | None:
    """A table's comment (nft 1.0.6's JSON output omits it, so read the text form)."""
    try:
        text = backend().run(f"list table {family} {name}")
    except NftError:
        return None
    match = re.search(r'^\s*comment "([^"]*)"', text, re.MULTILINE)
    return match.group(1) if match else ""


def our_tables() -> list[tuple[str, str]]:
    return [
        (t["family"], t["name"])
        for t in table_list()
        if (t["family"], t["name"]) in marks.OUR_TABLES
    ]


def bridge_conntrack_supported() -> bool:
    """Whether `ct` works in bridge-family tables (CONFIG_NF_CONNTRACK_BRIDGE)."""
    probe = (
        "table bridge mullvad_allow_k8s_probe {\n"
        "\tchain p { type filter hook prerouting priority "
        f"{marks.PREROUTING_PRIORITY.value}; policy accept;\n"
        f"\t\tct mark set {marks.CT_MARK.nft}\n\t}}\n}}\n"
    )
    try:
        check(probe)
    except NftError:
        return False
    return True


def _check_stdin() -> int:
    """Entry point for the private-namespace check (see check())."""
    try:
        backend().run(sys.stdin.read(), check=True)
    except NftError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--check-stdin"]:
    raise SystemExit(_check_stdin())
