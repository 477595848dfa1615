# The one place where services.mullvadAllowK8s option values become the generator's
# settings. Keys are the schema's KEYs (`mullvad-allow-k8s settings --format schema`),
# values are what `mullvad-allow-k8s --json FILE` accepts: strings, lists of strings,
# booleans. Only builtins are used, so tests can evaluate this file without nixpkgs.
rec {
  # cfg: the evaluated services.mullvadAllowK8s options.
  toGeneratorSettings = cfg: {
    PRESET = cfg.preset;
    POD_CIDRS = cfg.podCidrs;
    SERVICE_CIDRS = cfg.serviceCidrs;
    MACHINE_ADDRESSES = cfg.machineAddresses; # "auto" or a list
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

  # What 0.1.x's services.mullvadAllowK8s.inboundPorts becomes (the generator's
  # settings.migrate does the same for the other front ends): the old default
  # "non-ephemeral" goes, an explicit port list keeps working as hostPorts.
  hostPortsFromInboundPorts =
    value: if value == null || value == "non-ephemeral" then null else value;
}
