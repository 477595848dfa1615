# For users without flakes:
#   nix-build -A package      the CLI (./result/bin/mullvad-allow-k8s)
#   nix-build -A tests.vm     the NixOS VM test (needs KVM)
# NixOS configuration: imports = [ (import ./path/to/mullvad-allow-k8s { }).module ];
# (the module builds its default package from this tree; see the README).
{
  pkgs ? import <nixpkgs> { },
}:
{
  package = pkgs.callPackage ./nix/package.nix { };
  module = ./nix/module.nix;
  overlay = import ./nix/overlay.nix;
  tests.vm = import ./nix/tests/vm.nix { inherit pkgs; };
}
