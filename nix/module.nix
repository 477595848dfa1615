# NixOS module: services.mullvadAllowK8s.
#
# Thin on purpose: the options are the settings schema of mullvad-allow-k8s
# (`mullvad-allow-k8s settings --format schema`, one option per KEY, camelCase), the
# module turns them into the generator's JSON (./settings.nix), and the generator itself
# writes the ruleset at build time (./generate.sh). So a NixOS machine gets byte for byte
# the file the Debian and RPM packages write for the same settings.
#
# Two modes, chosen by the values (./settings.nix detectsAtRuntime):
# - build time (the default): every cluster range is declared, or is the preset's, so
#   the JSON the build hands the generator has nothing "auto" in it and the generator
#   never looks at the build machine (in the sandbox it would find nothing, and without
#   the sandbox it would read the builder). The ruleset is a store path: reviewed with
#   `nix build`, checked by nftables.service at build time (loader = "nftables"), rolled
#   back with the generation.
# - run time: preset = "auto" or podCidrs/serviceCidrs/nodeNetworks = "auto" ask for the
#   machine's own clusters, which only the running machine knows (kind's Docker network
#   gets its subnet when `kind create cluster` runs, long after the build). Then
#   mullvad-allow-k8s.service runs `apply` with the same JSON from the store, writing
#   the ruleset under /run, and mullvad-allow-k8s-follow.service (`follow`) re-applies
#   it when the clusters change.
# The schema's default is auto (Debian/RPM read the machine they run on); the module's
# default stays the build-time mode (kubeadm's preset, what auto falls back to when it
# finds nothing): a NixOS configuration then fully determines the firewall, as it did
# before, and "auto" is one explicit word away.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types literalExpression;
  cfg = config.services.mullvadAllowK8s;
  # Whether the configuration sets hostPorts itself (then it wins over inboundPorts, as
  # HOST_PORTS does in the generator's settings.migrate), not just its default.
  hostPortsSet =
    options.services.mullvadAllowK8s.hostPorts.highestPrio < (lib.mkOptionDefault null).priority;
  mapping = import ./settings.nix;

  # Our table names (mullvad_allow_k8s.marks.TABLE_NAME / BRIDGE_TABLE_NAME).
  tableName = "mullvad_allow_k8s";

  nftables = config.networking.nftables;
  etcPath = lib.removePrefix "/etc/" cfg.output;
  # The run-time mode writes cfg.output: its directory is the one the units may write
  # (replacing the package units' /etc/nftables.d, which NixOS manages).
  outputDir = dirOf cfg.output;
  writablePaths = [
    ""
    outputDir
  ];

  # Some value is "auto": the ruleset is made on the running machine (see the header).
  runtime = mapping.detectsAtRuntime cfg;
  exe = lib.getExe cfg.package;
  settingsJson = "${generated}/settings.json";
  # `--settings none`: the units read only the module's JSON, never a file in /etc.
  applyCommand = "${exe} apply --settings none --json ${settingsJson}";
  # At boot the unit starts before the container engines and libvirtd (see below): it
  # asks none of them (--no-engines), so its start never waits on one. A reload comes
  # once the machine is up and asks them too. Detection finds their CLIs only where root
  # keeps them (the system profile, /run/current-system/sw/bin), never on a PATH given.
  bootCommand = "${exe} apply --no-engines --settings none --json ${settingsJson}";
  reloadCommand = applyCommand;

  # openFirewall: hostPorts (else the preset's; with preset "auto" they must be given)
  # and, where the nodes are this machine, kube-proxy's default NodePort range
  # (--service-node-port-range).
  firewallPorts =
    if cfg.hostPorts != null then cfg.hostPorts else mapping.presetHostPorts.${cfg.preset} or [ ];
  toRange =
    word:
    let
      bounds = builtins.match "([0-9]+)-([0-9]+)" word;
    in
    {
      from = lib.toInt (builtins.elemAt bounds 0);
      to = lib.toInt (builtins.elemAt bounds 1);
    };
  nodePorts = lib.optional (!builtins.elem cfg.preset mapping.nodesElsewhere) {
    from = 30000;
    to = 32767;
  };

  presets = [
    "kubeadm"
    "k3s"
    "rke2"
    "kind"
    "k3d"
    "minikube"
    "minikube-kvm2"
    "minikube-none"
    "microk8s"
    "k0s"
    "custom"
  ];
  portRange = types.strMatching "[0-9]{1,5}-[0-9]{1,5}";
  # The shapes the generator accepts (mullvad_allow_k8s.settings); it checks the rest
  # (host bits, private ranges, overlaps) when it runs.
  cidrPattern = "([0-9]{1,3}[.]){3}[0-9]{1,3}/[0-9]{1,2}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*/[0-9]{1,3}";
  ifPatternPattern = "[A-Za-z0-9_.-]{1,15}|[A-Za-z0-9_.-]{1,14}[*]";
  cidr = types.strMatching cidrPattern;
  nodeNetwork = types.strMatching "(${cidrPattern})@(${ifPatternPattern})";
  ifPattern = types.strMatching ifPatternPattern;
  ifName = types.strMatching "[A-Za-z0-9_.-]{1,15}";
  auto = types.enum [ "auto" ];

  generated =
    pkgs.runCommand "mullvad-allow-k8s-${if runtime then "settings" else "ruleset"}"
      {
        nativeBuildInputs = [ cfg.package ];
        settings = builtins.toJSON (mapping.toGeneratorSettings cfg);
        passAsFile = [ "settings" ];
      }
      ''
        sh ${./generate.sh} "$settingsPath" "$out"${lib.optionalString runtime " runtime"}
      '';
in
{
  options.services.mullvadAllowK8s = {
    enable = lib.mkEnableOption ''
      the Kubernetes bypass for the Mullvad VPN firewall: an nftables table
      (`inet mullvad_allow_k8s`) that gives a local cluster's traffic Mullvad's
      split-tunnel marks, so pods, services and NodePorts keep working while Mullvad is
      connected or blocking, and nothing else is exempted
    '';

    package = mkOption {
      type = types.package;
      default = pkgs.mullvad-allow-k8s or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression ''pkgs.mullvad-allow-k8s or (pkgs.callPackage "''${mullvad-allow-k8s}/nix/package.nix" { })'';
      description = "The mullvad-allow-k8s package (its generator also runs at build time).";
    };

    preset = mkOption {
      type = types.enum ([ "auto" ] ++ presets);
      default = "kubeadm";
      example = "k3s";
      description = ''
        Kubernetes distribution whose defaults fill the ranges that are empty
        ({option}`services.mullvadAllowK8s.podCidrs`, `serviceCidrs`,
        `nodeNetworks`) and give the `hostPorts`. `kind`, `k3d`, `minikube` (its docker
        driver) and `minikube-kvm2` have node networks only (the host never sees their
        pods and services); `minikube-none` is minikube running kubeadm on this machine.
        `custom`: no defaults, give the ranges.

        `"auto"`: the distributions running on this machine (kubeadm's defaults if none
        is found), and by default (`"auto"` there too) their pod, service and node
        ranges, which only the running machine can tell: this switches the module to
        its run-time mode (mullvad-allow-k8s.service runs `mullvad-allow-k8s apply` at
        boot and on every change, mullvad-allow-k8s-follow.service re-applies when
        clusters come and go, the ruleset is written to
        {option}`services.mullvadAllowK8s.output` under /run). The default is a named
        preset, so the ruleset is built, reviewed and rolled back with the system.
      '';
    };

    podCidrs = mkOption {
      type = types.either auto (types.listOf cidr);
      default = if cfg.preset == "auto" then "auto" else [ ];
      defaultText = literalExpression ''if preset == "auto" then "auto" else [ ]'';
      example = [
        "10.42.0.0/16"
        "fd42::/56"
      ];
      description = ''
        Pod network ranges (IPv4 and/or IPv6, private ranges only), built into the
        ruleset. `[ ]` (the default, unless `preset = "auto"`): the preset's. `"auto"`:
        the ranges the running cluster's configuration names (kubeadm's manifests,
        k3s/rke2 config files, ...), read on the running machine: the run-time mode
        (see {option}`services.mullvadAllowK8s.preset`).
      '';
    };

    serviceCidrs = mkOption {
      type = types.either auto (types.listOf cidr);
      default = if cfg.preset == "auto" then "auto" else [ ];
      defaultText = literalExpression ''if preset == "auto" then "auto" else [ ]'';
      example = [ "10.43.0.0/16" ];
      description = ''
        Service (ClusterIP) ranges (IPv4 and/or IPv6). `[ ]`: the preset's. `"auto"`:
        detected on the running machine (the run-time mode, as for `podCidrs`).
      '';
    };

    nodeNetworks = mkOption {
      type = types.nullOr (types.either auto (types.listOf nodeNetwork));
      default = if cfg.preset == "auto" then "auto" else null;
      defaultText = literalExpression ''if preset == "auto" then "auto" else null'';
      example = [ "172.18.0.0/16@br-*" ];
      description = ''
        Node networks of clusters in containers or VMs (kind, k3d, minikube's docker and
        kvm2 drivers) as `"CIDR@INTERFACE"`: the range on the bridge it lives on (an
        interface name or a `NAME*` pattern). This machine may reach the nodes there
        (kubectl), and connections forwarded to a node (kind's extraPortMappings),
        traffic between the nodes on that bridge and their DNS to its gateway are
        exempted; the nodes' other traffic is not. `null`: the preset's (kind
        `172.18.0.0/16@br-*`, the subnet Docker gives the first network, and its IPv6
        ULA; none for clusters running on this machine; the default, unless
        `preset = "auto"`); `[ ]`: none.

        `"auto"`: the networks kind, k3d and minikube made, found through docker,
        podman and virsh, each bound to its own bridge (else the preset's). Docker picks
        the subnet when the cluster is created, so only the running machine knows it:
        this is the run-time mode (see {option}`services.mullvadAllowK8s.preset`).
      '';
    };

    machineAddresses = mkOption {
      type = types.either (types.enum [ "auto" ]) (types.nonEmptyListOf types.str);
      default = "auto";
      example = [ "192.168.1.20" ];
      description = ''
        Addresses of this machine on which {option}`services.mullvadAllowK8s.hostPorts`
        are reachable. `"auto"`: any address configured on the interface a connection
        arrives on (except the tunnel), checked per packet, so DHCP changes need no rebuild.
      '';
    };

    publicAddresses = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "203.0.113.7" ];
      description = ''
        Extra addresses routed to this machine that are not configured on the incoming
        interface (for example a public address on `lo`), on which `hostPorts` are
        reachable too.
      '';
    };

    hostPorts = mkOption {
      type = types.nullOr (types.listOf (types.either types.port portRange));
      default = mapping.hostPortsFromInboundPorts cfg.inboundPorts;
      defaultText = literalExpression "null";
      example = [
        6443
        9345
      ];
      description = ''
        TCP ports of cluster services that run on this machine itself (not in pods) and
        must be reachable from the LAN or the internet: the API server. `null`: the
        preset's (`mullvad-allow-k8s settings --preset NAME` shows them; kind has none);
        `[ ]`: none. NodePorts, hostPorts, LoadBalancer and external IPs need
        no entry: a connection forwarded into a pod is exempted whatever port it came in
        on. Every other service of this machine (sshd, a database) stays under Mullvad's
        rules.
      '';
    };

    # Retired in 0.2.0 (kept invisible so old configurations evaluate; see warnings).
    inboundPorts = mkOption {
      type = types.nullOr (
        types.either (types.enum [ "non-ephemeral" ]) (
          types.nonEmptyListOf (types.either types.port portRange)
        )
      );
      default = null;
      visible = false;
      description = "Retired in 0.2.0: an explicit list becomes the default of hostPorts.";
    };

    ephemeralPorts = mkOption {
      type = types.nullOr portRange;
      default = null;
      visible = false;
      description = "Retired in 0.2.0: no longer needed.";
    };

    tunnelInterface = mkOption {
      type = ifName;
      default = "wg0-mullvad";
      description = "Mullvad's tunnel interface; traffic arriving on it is never exempted.";
    };

    clusterInterfaces = mkOption {
      type = types.nonEmptyListOf ifPattern;
      default = [
        "cni*"
        "cbr0"
        "veth*"
        "flannel*"
        "cali*"
        "vxlan.calico"
        "tunl0"
        "cilium_*"
        "lxc*"
        "kube-bridge"
        "kube-ipvs0"
        "weave"
        "genev*"
        "antrea-*"
        "ovn0"
        "docker0"
        "br-*"
        "bridge"
        "podman*"
        "virbr*"
      ];
      example = [ "cni0" "flannel.1" "veth*" ];
      description = ''
        Interfaces cluster traffic may leave by (a trailing `*` matches any suffix): CNI
        bridges, veths and overlays, container engines' and libvirt's bridges (nodes of
        container and VM clusters). An exempted flow to a cluster address routed
        elsewhere (no such pod or service here, so the default route) loses the
        exemption. Add the LAN interface only for host-gw style multi-node clusters.
      '';
    };

    output = mkOption {
      type = types.str;
      default =
        if runtime then
          "/run/mullvad-allow-k8s/k8s_bypass_mullvad.nft"
        else
          "/etc/nftables.d/k8s_bypass_mullvad.nft";
      defaultText = literalExpression ''
        if the run-time mode (some value is "auto") then "/run/mullvad-allow-k8s/k8s_bypass_mullvad.nft"
        else "/etc/nftables.d/k8s_bypass_mullvad.nft"'';
      description = ''
        Where the ruleset is. Built at build time: installed through
        {option}`environment.etc`, so it must lie under /etc. In the run-time mode
        `mullvad-allow-k8s apply` writes it on the running machine, so it must not lie
        under /etc (which NixOS manages) or /nix; /run suits, since every boot detects
        again. Part of the settings the table's fingerprint covers.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the ports the cluster serves in NixOS' own firewall
        ({option}`networking.firewall`, either backend), which drops connections from the
        LAN and the internet to every port not listed there, whatever Mullvad allows:
        {option}`services.mullvadAllowK8s.hostPorts` (TCP; `null`: the preset's, so with
        `preset = "auto"` they must be given) and, unless the nodes run in containers
        or VMs (kind, k3d, minikube, minikube-kvm2), the NodePort range 30000-32767 (TCP
        and UDP: kube-proxy's default `--service-node-port-range`). Added to
        `allowedTCPPorts`, `allowedTCPPortRanges` and `allowedUDPPortRanges`. Off by
        default, like every NixOS service's `openFirewall`.
      '';
    };

    bridgeTable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also mark bridged pod traffic in a bridge-family table. Needs a kernel with
        nf_conntrack_bridge; not needed with br_netfilter, which Kubernetes enables.
        Loaded by mullvad-allow-k8s.service (`loader = "unit"`), never by
        nftables.service: on a kernel without nf_conntrack_bridge it would fail that
        service's single transaction, NixOS' own firewall table included.
      '';
    };

    loader = mkOption {
      type = types.enum [
        "nftables"
        "unit"
      ];
      default = if nftables.enable && !runtime && !cfg.bridgeTable then "nftables" else "unit";
      defaultText = literalExpression ''if config.networking.nftables.enable && the build-time mode && !bridgeTable then "nftables" else "unit"'';
      description = ''
        How the table reaches the kernel. `nftables`: as
        {option}`networking.nftables.tables` entries, loaded, checked at build time and
        replaced by nftables.service with the rest of the NixOS ruleset (build-time mode
        only: their content must be known at build time; not with `bridgeTable`, which
        would make a kernel without nf_conntrack_bridge fail the whole NixOS ruleset). `unit`: by
        mullvad-allow-k8s.service, which loads only our file (plus the tunnel's current
        addresses) and loads it again whenever nftables.service restarts or reloads.
      '';
    };

    generated = mkOption {
      type = types.package;
      readOnly = true;
      default = generated;
      defaultText = lib.literalMD "the generator's output for these settings";
      description = ''
        The generator's output: {file}`k8s_bypass_mullvad.nft`, {file}`settings.env`,
        {file}`settings.json` and the table bodies. Build it to review the ruleset:
        `nix build .#nixosConfigurations.HOST.config.services.mullvadAllowK8s.generated`.
        In the run-time mode only {file}`settings.json` (what the units apply) and
        {file}`settings.env`: the ruleset is made on the machine
        (`mullvad-allow-k8s settings` shows what was detected).
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !(nftables.enable && nftables.flushRuleset);
            message = ''
              services.mullvadAllowK8s: networking.nftables.flushRuleset is true, so every start
              and reload of nftables.service runs `flush ruleset`, which also deletes Mullvad's
              `inet mullvad` table (its firewall and kill switch) and kube-proxy's tables.
              Set networking.nftables.flushRuleset = false; (it defaults to true when
              system.stateVersion is older than 23.11 or networking.nftables.ruleset or
              rulesetFile is set) and declare your own tables in networking.nftables.tables,
              which nftables.service replaces one by one.
            '';
          }
          {
            assertion = cfg.loader == "nftables" -> nftables.enable;
            message = ''
              services.mullvadAllowK8s.loader = "nftables" needs networking.nftables.enable = true;
              use loader = "unit" otherwise.
            '';
          }
          {
            assertion = runtime || (lib.hasPrefix "/etc/" cfg.output && etcPath != "");
            message = ''
              services.mullvadAllowK8s.output = "${cfg.output}": the file is installed through
              environment.etc, so it must be a path under /etc/.
            '';
          }
          {
            assertion =
              !runtime
              || (
                lib.hasPrefix "/" cfg.output
                && !lib.hasPrefix "/etc/" cfg.output
                && !lib.hasPrefix "/nix/" cfg.output
              );
            message = ''
              services.mullvadAllowK8s.output = "${cfg.output}": with "auto" settings the
              ruleset is written at run time by mullvad-allow-k8s.service, so it must be an
              absolute path outside /etc (which NixOS manages) and /nix, e.g. the default
              /run/mullvad-allow-k8s/k8s_bypass_mullvad.nft.
            '';
          }
          {
            assertion = cfg.bridgeTable -> cfg.loader == "unit";
            message = ''
              services.mullvadAllowK8s.loader = "nftables" with bridgeTable = true: nftables.service
              loads every table in one transaction, and on a kernel without nf_conntrack_bridge
              our bridge table fails it all, NixOS' own firewall table included. Use
              loader = "unit" (the default with bridgeTable), which loads our tables on their own.
            '';
          }
          {
            assertion = runtime -> cfg.loader == "unit";
            message = ''
              services.mullvadAllowK8s.loader = "nftables" needs a ruleset known at build time,
              but ${
                lib.concatStringsSep ", " (
                  lib.optional (cfg.preset == "auto") "preset"
                  ++ lib.optional (cfg.podCidrs == "auto") "podCidrs"
                  ++ lib.optional (cfg.serviceCidrs == "auto") "serviceCidrs"
                  ++ lib.optional (cfg.nodeNetworks == "auto") "nodeNetworks"
                )
              } = "auto" is detected on the running machine: use loader = "unit", or declare
              the values.
            '';
          }
        ];

        warnings =
          lib.optional (!(config.services.mullvad-vpn.enable or false)) ''
            services.mullvadAllowK8s is enabled but services.mullvad-vpn.enable is false. The
            table only gives cluster traffic Mullvad's split-tunnel marks; without Mullvad's
            daemon (and its `inet mullvad` table) it changes nothing. Enable
            services.mullvad-vpn, or ignore this if the Mullvad app runs some other way.
          ''
          ++ lib.optional (cfg.inboundPorts != null) ''
            services.mullvadAllowK8s.inboundPorts is retired (0.2.0): new inbound connections
            are exempted only when the cluster serves them (forwarded into a pod) or when they
            are for services.mullvadAllowK8s.hostPorts.
            ${
              if cfg.inboundPorts == "non-ephemeral" then
                "The old default \"non-ephemeral\" is gone; remove the setting."
              else if hostPortsSet then
                "hostPorts is set too and wins: your inboundPorts list is ignored; remove it."
              else
                "Your list is now the default of hostPorts; move it there and remove inboundPorts."
            }
          ''
          ++ lib.optional (cfg.ephemeralPorts != null) ''
            services.mullvadAllowK8s.ephemeralPorts is retired (0.2.0) and no longer needed:
            only new inbound connections are judged. Remove the setting.
          '';

        environment.systemPackages = [ cfg.package ];
        # The first settings file the CLI reads: `mullvad-allow-k8s status` and `doctor`
        # then judge the loaded table against these settings (in the run-time mode they
        # detect, as apply does).
        environment.etc."default/mullvad-allow-k8s".source = "${generated}/settings.env";
      }

      (lib.mkIf cfg.openFirewall {
        assertions = [
          {
            assertion = cfg.preset == "auto" -> cfg.hostPorts != null;
            message = ''
              services.mullvadAllowK8s.openFirewall = true with preset = "auto": the preset is
              detected on the running machine, so which host ports to open is not known at
              build time. Set services.mullvadAllowK8s.hostPorts (e.g. [ 6443 ], or [ ] for
              only the NodePort range).
            '';
          }
        ];
        networking.firewall = {
          allowedTCPPorts = builtins.filter builtins.isInt firewallPorts;
          allowedTCPPortRanges = map toRange (builtins.filter builtins.isString firewallPorts) ++ nodePorts;
          allowedUDPPortRanges = nodePorts;
        };
      })

      (lib.mkIf (!runtime) {
        environment.etc.${etcPath}.source = "${generated}/k8s_bypass_mullvad.nft";
      })

      (lib.mkIf (cfg.loader == "nftables") {
        # networking.nftables wraps `content` in `table FAMILY NAME { ... }` itself and
        # replaces the table atomically; `include` inside a table block is plain nft.
        networking.nftables.tables.${tableName} = {
          family = "inet";
          content = ''include "${generated}/inet-body.nft"'';
        };
        # As the generated file's preamble does: remove the tables of the hand-edited
        # k8s_bypass_mullvad.nft this package supersedes (mullvad_allow_k8s.marks.SEED_TABLES).
        networking.nftables.extraDeletions = ''
          table inet bypass-mullvad
          delete table inet bypass-mullvad
          table bridge k8s-bypass-mullvad
          delete table bridge k8s-bypass-mullvad
        '';
      })

      (lib.mkIf (cfg.loader == "unit") {
        # The package's own unit: oneshot, before network-pre.target, PartOf=nftables.service.
        systemd.packages = [ cfg.package ];
        systemd.services.mullvad-allow-k8s = {
          wantedBy = [ "multi-user.target" ];
          # New settings: load the new file (the package's ExecReload would regenerate
          # it from the settings file and write into /etc, which is read-only here), or
          # in the run-time mode apply the new JSON. The run-time mode reloads through
          # reloadIfChanged instead (below: the JSON's path is in ExecStart); NixOS warns
          # about a unit with both.
          reloadTriggers = lib.mkIf (!runtime) [ generated ];
          serviceConfig.ExecReload = [
            ""
            (if runtime then reloadCommand else "${exe} apply --from-file")
          ];
        };
      })

      (lib.mkIf runtime {
        # Both units write cfg.output (apply), and the package's units make the file
        # system read-only but for /etc/nftables.d (ProtectSystem=strict,
        # ReadWritePaths): they may write its directory instead, which
        # systemd-tmpfiles makes (a bind mount needs it to exist) before the loader
        # starts.
        systemd.tmpfiles.rules = [ "d ${outputDir} 0755 root root - -" ];

        # Detect, generate, check, write cfg.output and load, at boot and on every reload.
        # This unit starts early (before network-pre.target, as the package's unit says),
        # before the container engines and libvirtd, which are socket-activated and
        # ordered after the network: so it asks none of them (bootCommand) and its start
        # never waits on one; it reads the clusters' config files, and the follow
        # service, ordered after the engines, adds their networks as soon as they run.
        # A reload (reloadCommand) comes later and asks the engines too.
        systemd.services.mullvad-allow-k8s = {
          after = [ "systemd-tmpfiles-setup.service" ];
          serviceConfig.ExecStart = [
            ""
            bootCommand
          ];
          serviceConfig.ReadWritePaths = writablePaths;
          # New settings change ExecStart (the JSON's store path): reload, which applies
          # them in one transaction, instead of the restart switch-to-configuration does
          # by default (stop removes the table: cluster traffic would be dropped between).
          reloadIfChanged = true;
        };

        # The package's mullvad-allow-k8s-follow.service (`follow`: re-read on
        # Docker/Podman events and every 60 s, apply when the result changed; After= our
        # unit and the engines' services, PartOf= our unit, so stopping ours, which
        # removes the table, stops it too), given the module's JSON. It finds the
        # engines' CLIs in the system profile, as every root process does.
        systemd.services.mullvad-allow-k8s-follow = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = [
            ""
            "${exe} follow --settings none --json ${settingsJson}"
          ];
          serviceConfig.ReadWritePaths = writablePaths;
        };
      })
    ]
  );
}
