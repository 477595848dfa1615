# A NixOS configuration using the module (the README quotes this file; tests/nix
# evaluates it, with and without the nftables lines).
{
  # Mullvad's daemon: the table only changes how Mullvad's firewall treats the cluster.
  services.mullvad-vpn.enable = true;

  services.mullvadAllowK8s = {
    enable = true;
    preset = "k3s"; # pods 10.42.0.0/16, services 10.43.0.0/16; or give the ranges:
    # podCidrs = [ "10.42.0.0/16" "fd42::/56" ];
    # serviceCidrs = [ "10.43.0.0/16" "fd43::/112" ];
    # Clusters in containers or VMs: preset = "kind" (or k3d, minikube, minikube-kvm2)
    # exempts their node network; name it if Docker chose another subnet:
    # nodeNetworks = [ "172.19.0.0/16@br-*" ];
    # Or preset = "auto": what runs on the machine, detected at run time (see the README).
    machineAddresses = "auto"; # or [ "192.168.1.20" ]
    # Services on this machine itself (not in pods) reachable from the LAN: null, the
    # preset's (k3s: the API server, 6443); [ ] for none; or e.g. [ 6443 "8000-8099" ].
    # NodePorts, pods' hostPort and LoadBalancer IPs need no entry.
    hostPorts = null;
    # NixOS' firewall still drops LAN connections to them: true opens hostPorts and the
    # NodePort range (30000-32767, TCP and UDP) in networking.firewall.
    openFirewall = false;
  };

  # Both NixOS firewalls work, strict reverse-path filtering included: our prerouting
  # chain sets the fwmark before their rpfilter runs (iptables mangle -150, nftables
  # -140). With the nftables firewall our table becomes one of networking.nftables.tables. Never flush the whole ruleset: that deletes
  # Mullvad's and kube-proxy's tables on every firewall reload.
  # networking.nftables.enable = true;
  # networking.nftables.flushRuleset = false;
}
