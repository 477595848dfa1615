# mullvad-allow-k8s, built from this source tree: the CLI (generator, apply, status,
# doctor, follow), its systemd units and, when the tree has one, the man page.
{
  lib,
  python3Packages,
  installShellFiles,
  nftables,
  iproute2,
  util-linux,
}:
let
  fs = lib.fileset;
  root = ../.;
  pyproject = lib.importTOML ../pyproject.toml;
in
python3Packages.buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  src = fs.toSource {
    inherit root;
    fileset = fs.unions [
      ../pyproject.toml
      (fs.maybeMissing ../README.md) # pyproject's `readme`
      (fs.difference ../src (fs.maybeMissing ../src/mullvad_allow_k8s.egg-info))
      ../data
      ../tests/__init__.py
      ../tests/conftest.py
      ../tests/unit
    ];
  };

  build-system = [ python3Packages.setuptools ];
  # PyYAML: detection parses the clusters' YAML config files (kubeadm's manifests, k3s,
  # rke2, k0s); Debian and RPM depend on it too.
  dependencies = [
    python3Packages.netaddr
    python3Packages.pyyaml
  ];
  nativeBuildInputs = [ installShellFiles ];

  # nixpkgs packages no libnftables Python bindings, so the CLI uses its fallback, the
  # nft command; it also reads addresses with `ip -j addr` and checks as non-root with
  # unshare(1).
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      nftables
      iproute2
      util-linux
    ])
  ];

  # The units Debian and RPM ship (the NixOS module enables them through systemd.packages).
  postInstall = ''
    for unit in mullvad-allow-k8s.service mullvad-allow-k8s-follow.service; do
      install -Dm644 data/$unit $out/lib/systemd/system/$unit
      substituteInPlace $out/lib/systemd/system/$unit \
        --replace-fail /usr/bin/mullvad-allow-k8s $out/bin/mullvad-allow-k8s
    done
    for page in data/*.8 man/*.8; do
      if [ -e "$page" ]; then installManPage "$page"; fi
    done
  '';

  nativeCheckInputs = [
    python3Packages.pytestCheckHook
    python3Packages.hypothesis
  ];
  # The pure unit tests; the kernel and netlab suites need root and network namespaces.
  pytestFlagsArray = [ "tests/unit" ];
  pythonImportsCheck = [ "mullvad_allow_k8s" ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.gpl3Plus;
    mainProgram = "mullvad-allow-k8s";
    platforms = lib.platforms.linux;
  };
}
