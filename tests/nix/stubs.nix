# NixOS for evaluating nix/module.nix: the REAL NixOS modules it meets, from the pinned
# copy of nixpkgs' files in ../shared/nixos-modules (a test input beside the checkout,
# MIT, its SOURCE names the commit; never copied into this project), plus stubs for what
# that copy does not hold and our module does not touch.
#
# Real (evaluated as nixpkgs has them):
# - networking.nftables (nftables.nix: tables, flushRuleset's mkDefault, extraDeletions,
#   nftables.service and the ruleset text it loads),
# - networking.firewall (firewall.nix) in both backends (firewall-nftables.nix: the
#   nixos-fw table; firewall-iptables.nix: firewall.service),
# - services.mullvad-vpn (mullvad-vpn.nix), assertions/warnings (misc/assertions.nix),
#   system.stateVersion (misc/version.nix, label.nix, meta.nix),
# - the systemd unit option types (systemd.services is nixos/lib/systemd-types.nix's
#   `services`, with systemd-unit-options.nix) and unit rendering (systemd-lib.nix's
#   serviceToUnit: systemd.units."NAME.service".text, as systemd.nix builds it).
#
# Stubs (out of scope: not in the pinned copy, and nothing our module's behaviour
# depends on beyond the option existing):
# - pkgs: derivations that only record what they were given (runCommand's env and
#   buildCommand, writeText/writeTextFile's text and checkPhase); nothing is built.
# - the systemd module itself (nixos/modules/system/boot/systemd.nix, not in the copy):
#   only the options (services and units with the real types, package,
#   globalEnvironment, enableStrictShellChecks, packages, tmpfiles.rules), the
#   units = services mapping, and ONE of its warnings, restated here: a service with
#   both reloadIfChanged and reloadTriggers (issue 24 finding 1). Its other checks are
#   not restated.
# - boot.* (kernel modules, the kernel: version 6.12 with rpfilter, as every current
#   NixOS kernel), environment.etc and systemPackages, security.wrappers,
#   networking.enableIPv6 / resolvconf, virtualisation.{docker,podman,libvirtd}: plain
#   options with nixpkgs' types, which nothing here reads beyond their values.
{ lib, nixos }:
let
  inherit (lib) mkOption types;
  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  } // extra;
  writeText = name: text: fakeDrv name { inherit text; };
  pkgs = {
    mullvad-allow-k8s = fakeDrv "mullvad-allow-k8s-0.0.0" { meta.mainProgram = "mullvad-allow-k8s"; };
    runCommand = name: env: buildCommand: fakeDrv name { inherit env buildCommand; };
    callPackage = path: args: fakeDrv "callPackage" { inherit path args; };
    inherit writeText;
    writeScript = name: text: fakeDrv name { inherit text; executable = true; };
    writeShellScript = name: text: fakeDrv name { inherit text; executable = true; };
    writeScriptBin = name: text: fakeDrv name { inherit text; executable = true; };
    writeTextFile =
      args:
      fakeDrv args.name {
        inherit (args) text;
        executable = args.executable or false;
        checkPhase = args.checkPhase or "";
      };
    runtimeShell = "/nix/store/00000000000000000000000000000000-bash/bin/bash";
    buildPackages = {
      libredirect = fakeDrv "libredirect" { };
      lklWithFirewall.lib = fakeDrv "lkl-lib" { };
      nftables = fakeDrv "nftables-check" { };
      xorg.lndir = fakeDrv "lndir" { };
    };
  }
  // lib.genAttrs [
    "coreutils"
    "findutils"
    "gnugrep"
    "gnused"
    "systemd"
    "nftables"
    "iptables"
    "mullvad"
    "nixos-firewall-tool"
  ] (name: fakeDrv "${name}-0.0.0" { });

  # nixpkgs' nixos/lib/utils.nix builds systemdUtils the same way from these files.
  utilsModule =
    { config, ... }:
    let
      utils = {
        inherit systemdUtils;
        escapeSystemdPath = s: lib.replaceStrings [ "/" "-" " " ] [ "-" "\\x2d" "\\x20" ] (lib.removePrefix "/" s);
      };
      systemdUtils = {
        lib = import (nixos + "/lib/systemd-lib.nix") { inherit config lib pkgs utils; };
        unitOptions = import (nixos + "/lib/systemd-unit-options.nix") { inherit lib systemdUtils; };
        types = import (nixos + "/lib/systemd-types.nix") { inherit lib systemdUtils pkgs; };
      };
    in
    {
      _module.args.utils = utils;
    };

  systemdStub =
    { config, utils, ... }:
    let
      cfg = config.systemd;
    in
    {
      options.systemd = {
        package = mkOption {
          type = types.package;
          default = pkgs.systemd;
        };
        globalEnvironment = mkOption {
          type = with types; attrsOf (nullOr (oneOf [ str path package ]));
          default = { };
        };
        enableStrictShellChecks = mkOption {
          type = types.bool;
          default = false;
        };
        services = mkOption {
          type = utils.systemdUtils.types.services;
          default = { };
        };
        units = mkOption {
          type = utils.systemdUtils.types.units;
          default = { };
        };
        packages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };
      config = {
        systemd.units = lib.mapAttrs' (
          n: v: lib.nameValuePair "${n}.service" (utils.systemdUtils.lib.serviceToUnit v)
        ) cfg.services;
        # Restated (systemd.nix is not in the pinned copy): issue 24 finding 1.
        warnings = lib.concatLists (
          lib.mapAttrsToList (
            name: service:
            lib.optional (service.reloadIfChanged && service.reloadTriggers != [ ])
              "Service '${name}.service' has both 'reloadIfChanged' and 'reloadTriggers' set (stub of nixos systemd.nix's warning)"
          ) cfg.services
        );
      };
    };

  otherStubs = {
    options = {
      boot = {
        kernelModules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        blacklistedKernelModules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        extraModprobeConfig = mkOption {
          type = types.lines;
          default = "";
        };
        kernelPackages = mkOption {
          type = types.raw;
          default.kernel = {
            version = "6.12.0";
            config.isEnabled = _: true;
            features = { };
          };
        };
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule (
            { config, name, ... }:
            {
              options.text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              options.source = mkOption { type = types.path; };
              config.source = lib.mkIf (config.text != null) (lib.mkDefault (writeText name config.text));
            }
          )
        );
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      security.wrappers = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      networking.enableIPv6 = mkOption {
        type = types.bool;
        default = true;
      };
      networking.resolvconf = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        package = mkOption {
          type = types.package;
          default = fakeDrv "openresolv-0.0.0" { };
        };
      };
      # The engines whose networks `follow` reads (nixpkgs: virtualisation/docker.nix,
      # podman/default.nix, libvirtd.nix).
      virtualisation = lib.genAttrs [ "docker" "podman" "libvirtd" ] (engine: {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        package = mkOption {
          type = types.package;
          default = fakeDrv "${engine}-0.0.0" { };
        };
      });
    };
    config = {
      # What nftables.nix's checkRulesetRedirects default reads (etc.nix's files).
      environment.etc = lib.genAttrs [ "hosts" "protocols" "services" ] (n: {
        source = lib.mkDefault (fakeDrv "etc-${n}" { });
      });
      # A configuration that sets none (a test sets it to see flushRuleset's default).
      system.stateVersion = lib.mkDefault lib.trivial.release;
    };
  };
in
{
  inherit pkgs;

  nixos = [
    (nixos + "/modules/misc/assertions.nix")
    (nixos + "/modules/misc/meta.nix")
    (nixos + "/modules/misc/version.nix")
    (nixos + "/modules/services/networking/nftables.nix")
    (nixos + "/modules/services/networking/firewall.nix")
    (nixos + "/modules/services/networking/firewall-nftables.nix")
    (nixos + "/modules/services/networking/firewall-iptables.nix")
    (nixos + "/modules/services/networking/mullvad-vpn.nix")
    utilsModule
    systemdStub
    otherStubs
  ];
}
