{
  description = "Let a local Kubernetes cluster work behind the Mullvad VPN app's firewall";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = import ./nix/overlay.nix;

      # `import`, not a bare path: Nix 2.8's `flake check` wants a function here.
      nixosModules.default = import ./nix/module.nix;
      nixosModules.mullvad-allow-k8s = self.nixosModules.default;

      packages = forAllSystems (
        system: pkgs: {
          default = self.packages.${system}.mullvad-allow-k8s;
          mullvad-allow-k8s = pkgs.callPackage ./nix/package.nix { };
        }
      );

      checks = forAllSystems (
        system: pkgs: {
          package = self.packages.${system}.default;
          vm = import ./nix/tests/vm.nix { inherit pkgs; };
        }
      );
    };
}
