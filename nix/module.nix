# NixOS module: services.mullvadAllowK8s.
#
# Thin on purpose: the options are the settings schema of mullvad-allow-k8s
# (`mullvad-allow-k8s settings --format schema`, one option per KEY, camelCase), the
# module turns them into the generator's JSON (./settings.nix), and the generator itself
# writes the ruleset at build time (./generate.sh). So a NixOS machine gets byte for byte
# the file the Debian and RPM packages write for the same settings.
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

  presets = [
    "kubeadm"
    "k3s"
    "rke2"
    "kind"
    "minikube"
    "microk8s"
    "k0s"
    "custom"
  ];
  portRange = types.strMatching "[0-9]{1,5}-[0-9]{1,5}";

  generated =
    pkgs.runCommand "mullvad-allow-k8s-ruleset"
      {
        nativeBuildInputs = [ cfg.package ];
        settings = builtins.toJSON (mapping.toGeneratorSettings cfg);
        passAsFile = [ "settings" ];
      }
      ''
        sh ${./generate.sh} "$settingsPath" "$out"
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
      type = types.enum presets;
      default = "kubeadm";
      example = "k3s";
      description = ''
        Kubernetes distribution whose default pod and service ranges are used when
        {option}`services.mullvadAllowK8s.podCidrs` and `serviceCidrs` are empty.
        `custom`: no defaults, set both lists.
      '';
    };

    podCidrs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "10.42.0.0/16"
        "fd42::/56"
      ];
      description = "Pod network ranges (IPv4 and/or IPv6, private ranges only). Empty: the preset's.";
    };

    serviceCidrs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.43.0.0/16" ];
      description = "Service (ClusterIP) ranges (IPv4 and/or IPv6). Empty: the preset's.";
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
      type = types.str;
      default = "wg0-mullvad";
      description = "Mullvad's tunnel interface; traffic arriving on it is never exempted.";
    };

    clusterInterfaces = mkOption {
      type = types.nonEmptyListOf types.str;
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
      ];
      example = [ "cni0" "flannel.1" "veth*" ];
      description = ''
        Interfaces cluster traffic may leave by (a trailing `*` matches any suffix): CNI
        bridges, veths and overlays. An exempted flow to a cluster address routed
        elsewhere (no such pod or service here, so the default route) loses the
        exemption. Add the LAN interface only for host-gw style multi-node clusters.
      '';
    };

    output = mkOption {
      type = types.str;
      default = "/etc/nftables.d/k8s_bypass_mullvad.nft";
      description = ''
        Where the generated ruleset is installed (through {option}`environment.etc`, so
        it must lie under /etc). Part of the settings the table's fingerprint covers.
      '';
    };

    bridgeTable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also mark bridged pod traffic in a bridge-family table. Needs a kernel with
        nf_conntrack_bridge; not needed with br_netfilter, which Kubernetes enables.
      '';
    };

    loader = mkOption {
      type = types.enum [
        "nftables"
        "unit"
      ];
      default = if nftables.enable then "nftables" else "unit";
      defaultText = literalExpression ''if config.networking.nftables.enable then "nftables" else "unit"'';
      description = ''
        How the table reaches the kernel. `nftables`: as
        {option}`networking.nftables.tables` entries, loaded, checked at build time and
        replaced by nftables.service with the rest of the NixOS ruleset. `unit`: by
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
            assertion = lib.hasPrefix "/etc/" cfg.output && etcPath != "";
            message = ''
              services.mullvadAllowK8s.output = "${cfg.output}": the file is installed through
              environment.etc, so it must be a path under /etc/.
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
        environment.etc.${etcPath}.source = "${generated}/k8s_bypass_mullvad.nft";
        # The first settings file the CLI reads: `mullvad-allow-k8s status` and `doctor`
        # then judge the loaded table against these settings.
        environment.etc."default/mullvad-allow-k8s".source = "${generated}/settings.env";
      }

      (lib.mkIf (cfg.loader == "nftables") {
        # networking.nftables wraps `content` in `table FAMILY NAME { ... }` itself and
        # replaces the table atomically; `include` inside a table block is plain nft.
        networking.nftables.tables.${tableName} = {
          family = "inet";
          content = ''include "${generated}/inet-body.nft"'';
        };
        networking.nftables.tables."${tableName}-bridge" = lib.mkIf cfg.bridgeTable {
          name = tableName;
          family = "bridge";
          content = ''include "${generated}/bridge-body.nft"'';
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
          # A new ruleset: load the new file (the package's ExecReload would regenerate
          # it from the settings file and write into /etc, which is read-only here).
          reloadTriggers = [ generated ];
          serviceConfig.ExecReload = [
            ""
            "${lib.getExe cfg.package} apply --from-file"
          ];
        };
      })
    ]
  );
}
