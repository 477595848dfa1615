"""What every reader shares: its result types and the machine as it may see it.

A reader sees the machine only through `Host`, which reads files and runs programs
through the trust boundary (boundary.py) and turns what that refuses into a
`DetectError` naming the source and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from . import boundary

# A program's standard output, or None when it is missing or failed.
Runner = Callable[[Sequence[str]], str | None]

PODS = "pods"
SERVICES = "services"
NODES = "nodes"


class Found(NamedTuple):
    """One range the machine uses for a cluster, with where it was read."""

    distribution: str  # kubeadm | k3s | rke2 | microk8s | k0s | kind | minikube | k3d
    kind: str  # pods | services | nodes (a container/VM node network the host sees)
    network: str  # a CIDR as written, e.g. "10.42.0.0/16"
    interface: str | None  # the host bridge it lives on, where known
    source: str  # e.g. "/etc/kubernetes/manifests/kube-apiserver.yaml: --cluster-cidr"


class DetectError(Exception):
    """A present but unusable source; str() is one line naming it.

    `fatal` is False for a source that root does not trust (boundary.UntrustedError): it is
    ignored, with its distribution's defaults, and never stops the others; a broken
    trusted source (a typo in root's config) is fatal: `auto` then changes nothing.
    """

    def __init__(self, where: str, problem: str, *, fatal: bool = True) -> None:
        self.where = where
        self.problem = " ".join(problem.split())
        self.fatal = fatal
        self.distribution = ""  # whose reader met it (set by detect)
        super().__init__(f"{where}: {self.problem}")


def run_command(argv: Sequence[str]) -> str | None:
    """A program's standard output through the boundary; None when missing or failing.

    A time-out or an oversized answer raises DetectError: the engine is there but
    cannot be asked, which is not the same as "no networks".
    """
    try:
        result = boundary.run(argv)
    except boundary.UntrustedError as e:
        raise DetectError(" ".join(argv), str(e)) from None
    except OSError:
        return None
    if result is None or result[0] != 0:
        return None
    return result[1].decode("utf-8", errors="replace")


def reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


class Host:
    """Files under `root`, the engines' CLIs (each command run once), the environment."""

    def __init__(self, root: Path, run: Runner, env: Mapping[str, str]) -> None:
        self.root = Path(os.path.abspath(root))
        self._run = run
        self.env = env
        self.errors: list[DetectError] = []
        self._outputs: dict[tuple[str, ...], str | None] = {}

    def path(self, name: str) -> Path:
        return self.root / name.lstrip("/")

    def show(self, path: Path) -> str:
        """The machine's own name for a path under root."""
        try:
            relative = str(path.relative_to(self.root))
        except ValueError:
            return str(path)
        return "/" if relative == "." else "/" + relative

    def _name(self, path: Path) -> str:
        return self.show(path).lstrip("/")

    def exists(self, *names: str) -> bool:
        return any(boundary.present(self.root, n.lstrip("/")) for n in names)

    def is_dir(self, path: Path) -> bool:
        return boundary.is_dir(self.root, self._name(path))

    def listdir(self, path: Path) -> list[str] | None:
        """A directory's entries, sorted; None when it does not exist."""
        try:
            return boundary.list_dir(self.root, self._name(path))
        except boundary.UntrustedError as e:
            raise DetectError(self.show(path), f"ignored: {e}", fatal=False) from None
        except OSError as e:
            raise DetectError(self.show(path), f"cannot list: {reason(e)}") from None

    def read(self, path: Path) -> str | None:
        """A file's text; None when it does not exist (an unreadable one raises)."""
        try:
            return boundary.read_text(self.root, self._name(path))
        except boundary.UntrustedError as e:
            raise DetectError(self.show(path), f"ignored: {e}", fatal=False) from None
        except (OSError, UnicodeDecodeError) as e:
            raise DetectError(self.show(path), f"cannot read: {reason(e)}") from None

    def run(self, *argv: str) -> str | None:
        try:
            boundary.check_argv(argv)
        except ValueError as e:
            raise DetectError(" ".join(argv[:3]), str(e), fatal=False) from None
        if argv not in self._outputs:
            self._outputs[argv] = self._run(argv)
        return self._outputs[argv]

    def guard(self, read: Callable[[], list[Found]]) -> list[Found] | None:
        """Run one reader step; a DetectError is recorded and gives None."""
        try:
            return read()
        except DetectError as e:
            if str(e) not in map(str, self.errors):  # one answer read by several readers
                self.errors.append(e)
            return None
