# Just enough of NixOS for lib.evalModules to evaluate nix/module.nix without nixpkgs:
# the options the module reads or sets, with nixpkgs' types and defaults (as of
# nixos-unstable, 2025), and a pkgs whose runCommand records what it was given.
{ lib }:
let
  inherit (lib) mkOption types;
  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  } // extra;
in
{
  pkgs = {
    mullvad-allow-k8s = fakeDrv "mullvad-allow-k8s-0.0.0" { meta.mainProgram = "mullvad-allow-k8s"; };
    coreutils = fakeDrv "coreutils-0.0.0" { };
    runCommand = name: env: buildCommand: fakeDrv name { inherit env buildCommand; };
    callPackage = path: args: fakeDrv "callPackage" { inherit path args; };
  };

  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule { options.source = mkOption { type = types.path; }; });
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      networking.nftables = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        # nixpkgs: mkDefault (stateVersion < 23.11 || ruleset/rulesetFile set).
        flushRuleset = mkOption {
          type = types.bool;
          default = false;
        };
        extraDeletions = mkOption {
          type = types.lines;
          default = "";
        };
        tables = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                options = {
                  enable = mkOption {
                    type = types.bool;
                    default = true;
                  };
                  name = mkOption { type = types.str; };
                  content = mkOption { type = types.lines; };
                  family = mkOption {
                    type = types.enum [ "ip" "ip6" "inet" "arp" "bridge" "netdev" ];
                  };
                };
                config.name = lib.mkDefault name;
              }
            )
          );
        };
      };
      networking.firewall = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        checkReversePath = mkOption {
          type = types.either types.bool (types.enum [ "strict" "loose" ]);
          default = true;
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
      services.mullvad-vpn.enable = mkOption {
        type = types.bool;
        default = false;
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.packages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
        default = { };
      };
    };
  };
}
