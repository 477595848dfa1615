"""k0s: /etc/k0s/k0s.yaml (optional) and k0s' defaults."""

from __future__ import annotations

from ..presets import PRESETS
from .host import PODS, SERVICES, DetectError, Found, Host
from .parse import cidr, type_name, yaml_documents

K0S_DEFAULTS = {PODS: PRESETS["k0s"].pod_cidrs[0], SERVICES: PRESETS["k0s"].service_cidrs[0]}
K0S_KUBE_ROUTER_BRIDGE = "kube-bridge"  # kube-router, k0s' default network provider


def k0s(host: Host) -> list[Found]:
    config = "/etc/k0s/k0s.yaml"
    installed = ("/usr/local/bin/k0s", "/usr/bin/k0s", "/var/lib/k0s")

    def read() -> list[Found] | None:
        path = host.path(config)
        text = host.read(path)
        if text is None:
            return None
        where = host.show(path)
        docs = [d for d in yaml_documents(text, where) if d is not None]
        clusters = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ClusterConfig"]
        if not clusters:
            if docs and not all(isinstance(d, dict) for d in docs):
                raise DetectError(where, "top level is not a mapping")
            clusters = [d for d in docs if isinstance(d, dict)] or [{}]
        spec = clusters[0].get("spec") or {}
        if not isinstance(spec, dict):
            raise DetectError(where, f"spec is a {type_name(spec)}, expected a mapping")
        network = spec.get("network") or {}
        if not isinstance(network, dict):
            raise DetectError(where, f"spec.network is a {type_name(network)}, expected a mapping")
        provider = str(network.get("provider") or "kuberouter").replace("-", "").lower()
        bridge = K0S_KUBE_ROUTER_BRIDGE if provider == "kuberouter" else None
        out: list[Found] = []
        for kind, key in ((PODS, "podCIDR"), (SERVICES, "serviceCIDR")):
            iface = bridge if kind == PODS else None
            if network.get(key):
                out.append(
                    Found(
                        "k0s",
                        kind,
                        cidr(network[key], where, f"spec.network.{key}"),
                        iface,
                        f"{where}: spec.network.{key}",
                    )
                )
            else:
                out.append(
                    Found(
                        "k0s",
                        kind,
                        K0S_DEFAULTS[kind],
                        iface,
                        f"k0s default (no spec.network.{key} in {where})",
                    )
                )
        dual = network.get("dualStack") or {}
        if not isinstance(dual, dict):
            raise DetectError(where, "spec.network.dualStack is not a mapping")
        if dual.get("enabled") is True:
            for kind, key in ((PODS, "IPv6podCIDR"), (SERVICES, "IPv6serviceCIDR")):
                if dual.get(key):
                    what = f"spec.network.dualStack.{key}"
                    out.append(
                        Found(
                            "k0s",
                            kind,
                            cidr(dual[key], where, what),
                            bridge if kind == PODS else None,
                            f"{where}: {what}",
                        )
                    )
        return out

    try:
        found = read()
    except DetectError as e:
        host.errors.append(e)
        return []
    if found is not None:
        return found
    if not host.exists(*installed):
        return []
    return [
        Found(
            "k0s",
            kind,
            K0S_DEFAULTS[kind],
            K0S_KUBE_ROUTER_BRIDGE if kind == PODS else None,
            f"k0s default (k0s installed, no {config})",
        )
        for kind in (PODS, SERVICES)
    ]
