# The one place where services.mullvadAllowK8s option values become the generator's
# settings. Keys are the schema's KEYs (`mullvad-allow-k8s settings --format schema`),
# values are what `mullvad-allow-k8s --json FILE` accepts: strings, lists of strings,
# booleans. Only builtins are used, so tests can evaluate this file without nixpkgs.
rec {
  # cfg: the evaluated services.mullvadAllowK8s options.
  toGeneratorSettings = cfg: {
    PRESET = cfg.preset; # "auto" only in the runtime mode (detectsAtRuntime)
    POD_CIDRS = cfg.podCidrs; # [ ]: the preset's; "auto": detected at run time
    SERVICE_CIDRS = cfg.serviceCidrs;
    NODE_NETWORKS = # null: the preset's; [ ]: none; "auto": detected at run time
      if cfg.nodeNetworks == null then
        ""
      else if cfg.nodeNetworks == [ ] then
        "none"
      else
        cfg.nodeNetworks;
    MACHINE_ADDRESSES = cfg.machineAddresses; # "auto" or a list (checked per packet)
    PUBLIC_ADDRESSES = cfg.publicAddresses;
    HOST_PORTS = # null: the preset's; [ ]: none; else ports (numbers) and "LOW-HIGH" ranges
      if cfg.hostPorts == null then
        ""
      else if cfg.hostPorts == [ ] then
        "none"
      else
        map toString cfg.hostPorts;
    TUNNEL_INTERFACE = cfg.tunnelInterface;
    CLUSTER_INTERFACES = cfg.clusterInterfaces;
    OUTPUT = cfg.output;
    BRIDGE_TABLE = cfg.bridgeTable;
  };

  # Whether these options leave anything for the generator to detect on the running
  # machine (the generator's settings.detects for this JSON): then the module runs
  # `apply` and `follow` at run time instead of building the ruleset. MACHINE_ADDRESSES
  # "auto" is not detection: it is matched per packet by the built ruleset.
  detectsAtRuntime =
    cfg:
    builtins.elem "auto" [
      cfg.preset
      cfg.podCidrs
      cfg.serviceCidrs
      cfg.nodeNetworks
    ];

  # Each preset's HOST_PORTS (mullvad_allow_k8s.presets; custom has none) and the presets
  # whose nodes run in containers or VMs, so their NodePorts are not this machine's:
  # what openFirewall opens must be known at evaluation, while the generator runs at
  # build time. tests/nix checks both against the generator's presets.
  presetHostPorts = {
    kubeadm = [ 6443 ];
    k3s = [ 6443 ];
    rke2 = [
      6443
      9345
    ];
    kind = [ ];
    k3d = [ ];
    minikube = [ ];
    minikube-kvm2 = [ ];
    minikube-none = [ 8443 ];
    microk8s = [ 16443 ];
    k0s = [ 6443 ];
    custom = [ ];
  };
  nodesElsewhere = [
    "kind"
    "k3d"
    "minikube"
    "minikube-kvm2"
  ];

  # What 0.1.x's services.mullvadAllowK8s.inboundPorts becomes (the generator's
  # settings.migrate does the same for the other front ends): the old default
  # "non-ephemeral" goes, an explicit port list keeps working as hostPorts.
  hostPortsFromInboundPorts =
    value: if value == null || value == "non-ephemeral" then null else value;
}
