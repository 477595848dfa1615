# NixOS VM test of services.mullvadAllowK8s (both loaders, with Mullvad blocking, and
# the run-time mode: preset = "auto" with Podman).
#   nix build .#checks.x86_64-linux.vm      or      nix-build -A tests.vm
# Needs nixpkgs and KVM; it is not run on the project's test machine (no nixpkgs there),
# only parsed, and its test script compiled, by tests/nix.
{
  pkgs ? import <nixpkgs> { },
}:
pkgs.testers.runNixOSTest {
  name = "mullvad-allow-k8s";

  defaults =
    { pkgs, ... }:
    {
      imports = [ ../module.nix ];
      virtualisation.restrictNetwork = true; # Mullvad's daemon must not reach out
      services.mullvad-vpn = {
        enable = true;
        enableExcludeWrapper = false;
      };
      services.mullvadAllowK8s = {
        enable = true;
        preset = "k3s";
      };
      # The stand-in pod's veth is trusted, as CNI bridges are on cluster nodes.
      networking.firewall.trustedInterfaces = [ "pod0" ];
      environment.systemPackages = [
        pkgs.curl
        pkgs.python3
      ];
    };

  nodes = {
    # iptables firewall: our own unit loads the table.
    unitloader = {
      networking.nftables.enable = false;
      networking.firewall.checkReversePath = "loose";
    };
    # nftables firewall: the table is one of networking.nftables.tables.
    nftloader = {
      networking.nftables.enable = true;
    };
    # "auto": apply at boot and follow what Podman's networks become.
    runtime =
      { lib, ... }:
      {
        networking.firewall.checkReversePath = "loose";
        virtualisation.podman.enable = true;
        services.mullvadAllowK8s.preset = lib.mkForce "auto";
      };
  };

  testScript = ''
    machines = [unitloader, nftloader]
    start_all()
    for m in machines:
        m.wait_for_unit("multi-user.target")

    with subtest("the installed file is what the CLI writes from flags on Debian/RPM"):
        for m in machines:
            m.succeed(
                "mullvad-allow-k8s generate --settings none --preset k3s > /tmp/expected.nft",
                "cmp /tmp/expected.nft /etc/nftables.d/k8s_bypass_mullvad.nft",
            )

    with subtest("the table is loaded and matches the settings"):
        for m in machines:
            m.succeed("nft list table inet mullvad_allow_k8s")
            m.succeed("mullvad-allow-k8s status")

    with subtest("a stand-in pod and a DNS-port service on the host"):
        for m in machines:
            m.succeed(
                "ip netns add pod",
                "ip link add pod0 type veth peer name eth0 netns pod",
                "ip addr add 10.42.0.1/24 dev pod0",
                "ip link set pod0 up",
                "ip -n pod link set lo up",
                "ip -n pod addr add 10.42.0.5/24 dev eth0",
                "ip -n pod link set eth0 up",
                "ip -n pod route add default via 10.42.0.1",
                "systemd-run --unit dns-stand-in python3 -m http.server 53 --bind 10.42.0.1",
            )
            m.wait_for_open_port(53, "10.42.0.1")

    pod_to_host = "ip netns exec pod curl -sf --max-time 5 http://10.42.0.1:53/"

    with subtest("Mullvad blocks (lockdown mode), cluster traffic still passes"):
        for m in machines:
            m.wait_for_unit("mullvad-daemon.service")
            m.wait_until_succeeds("mullvad status")
            m.succeed("mullvad lockdown-mode set on")
            # Assumption: a disconnected daemon in lockdown mode loads its blocking table.
            m.wait_until_succeeds("nft list table inet mullvad")
            m.succeed(pod_to_host)

    with subtest("without our table Mullvad drops it (the test is meaningful)"):
        unitloader.succeed("systemctl stop mullvad-allow-k8s.service")
        unitloader.fail("nft list table inet mullvad_allow_k8s")
        unitloader.fail(pod_to_host)
        unitloader.succeed("systemctl start mullvad-allow-k8s.service")
        unitloader.succeed(pod_to_host)

        nftloader.succeed("nft delete table inet mullvad_allow_k8s")
        nftloader.fail(pod_to_host)

    with subtest("reloading nftables brings ours back and keeps Mullvad's table"):
        nftloader.succeed("systemctl reload nftables.service")
        nftloader.succeed("nft list table inet mullvad")
        nftloader.succeed("mullvad-allow-k8s status")
        nftloader.succeed(pod_to_host)

    with subtest("run-time mode: applied at boot, then follows a new kind network"):
        runtime.wait_for_unit("mullvad-allow-k8s.service")
        runtime.wait_for_unit("mullvad-allow-k8s-follow.service")
        runtime.succeed(
            "test -f /run/mullvad-allow-k8s/k8s_bypass_mullvad.nft",
            "test ! -e /etc/nftables.d/k8s_bypass_mullvad.nft",
            "mullvad-allow-k8s status",
        )
        runtime.fail("nft list table inet mullvad_allow_k8s | grep -F 172.19.0.0/16")
        # The network `kind create cluster --provider podman` makes (no image needed).
        runtime.succeed("podman network create --subnet 172.19.0.0/16 kind")
        # Podman reports no network events: follow re-reads within its 60 s interval.
        runtime.wait_until_succeeds(
            "nft list table inet mullvad_allow_k8s | grep -F 172.19.0.0/16", timeout=120
        )
        runtime.succeed("mullvad-allow-k8s status")

    with subtest("reloading our unit loads the file again"):
        unitloader.succeed("systemctl reload mullvad-allow-k8s.service")
        unitloader.succeed("mullvad-allow-k8s status")
        unitloader.succeed(pod_to_host)
  '';
}
