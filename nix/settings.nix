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
    INBOUND_PORTS = # "non-ephemeral" or a list of ports (numbers) and "LOW-HIGH" ranges
      if builtins.isList cfg.inboundPorts then map toString cfg.inboundPorts else cfg.inboundPorts;
    EPHEMERAL_PORTS = cfg.ephemeralPorts; # always explicit: "auto" would read the build machine
    TUNNEL_INTERFACE = cfg.tunnelInterface;
    CLUSTER_INTERFACES = cfg.clusterInterfaces;
    OUTPUT = cfg.output;
    BRIDGE_TABLE = cfg.bridgeTable;
  };

  # Linux's own default for net.ipv4.ip_local_port_range.
  kernelEphemeralPorts = "32768-60999";

  # The value of boot.kernel.sysctl."net.ipv4.ip_local_port_range" ("LOW HIGH", or
  # null/absent) as the generator's "LOW-HIGH".
  ephemeralPortsFromSysctl =
    value:
    let
      parts = builtins.match "[[:space:]]*([0-9]+)[[:space:]]+([0-9]+)[[:space:]]*" (toString value);
    in
    if value == null then
      kernelEphemeralPorts
    else if parts == null then
      throw (
        "services.mullvadAllowK8s.ephemeralPorts: cannot read boot.kernel.sysctl."
        + "\"net.ipv4.ip_local_port_range\" = \"${toString value}\" (expected \"LOW HIGH\"); "
        + "set services.mullvadAllowK8s.ephemeralPorts = \"LOW-HIGH\" explicitly"
      )
    else
      "${builtins.elemAt parts 0}-${builtins.elemAt parts 1}";
}
