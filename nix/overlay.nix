# nixpkgs overlay: pkgs.mullvad-allow-k8s (the NixOS module's default package).
final: _prev: {
  mullvad-allow-k8s = final.callPackage ./package.nix { };
}
