"""MicroK8s: the snap's argument files and its CNI environment (root's, under /var/snap)."""

from __future__ import annotations

import shlex

from .host import PODS, SERVICES, DetectError, Found, Host
from .parse import cidr, cidr_list, env_file, flag

MICROK8S_ARGS = "/var/snap/microk8s/current/args"


def microk8s(host: Host) -> list[Found]:
    found: list[Found] = []
    for name, option, kind in (
        ("kube-proxy", "cluster-cidr", PODS),
        ("kube-apiserver", "service-cluster-ip-range", SERVICES),
    ):

        def read(name: str = name, option: str = option, kind: str = kind) -> list[Found]:
            path = host.path(f"{MICROK8S_ARGS}/{name}")
            text = host.read(path)
            if text is None:
                return []
            where = host.show(path)
            try:
                args = shlex.split(text, comments=True)
            except ValueError as e:
                raise DetectError(where, f"cannot split arguments: {e}") from None
            value = flag(args, option)
            if value is None:
                return []
            return [
                Found("microk8s", kind, net, None, f"{where}: --{option}")
                for net in cidr_list(value, where, f"--{option}")
            ]

        found.extend(host.guard(read) or [])

    def cni_env() -> list[Found]:
        path = host.path(f"{MICROK8S_ARGS}/cni-env")
        text = host.read(path)
        if text is None:
            return []
        where = host.show(path)
        env = env_file(text)
        out: list[Found] = []
        for family in ("IPv4", "IPv6"):
            if env.get(f"{family}_SUPPORT", "true").lower() == "false":
                continue
            for kind, what in ((PODS, "CLUSTER"), (SERVICES, "SERVICE")):
                key = f"{family}_{what}_CIDR"
                if env.get(key):
                    out.append(
                        Found("microk8s", kind, cidr(env[key], where, key), None, f"{where}: {key}")
                    )
        return out

    found.extend(host.guard(cni_env) or [])
    return found
