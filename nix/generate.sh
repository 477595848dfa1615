# Build step of the NixOS module (sourced by pkgs.runCommand; tests run it with sh).
# Usage: sh generate.sh SETTINGS_JSON OUTDIR [runtime], with mullvad-allow-k8s on PATH.
#
# OUTDIR/k8s_bypass_mullvad.nft  the ruleset, byte for byte what `mullvad-allow-k8s
#                                generate` prints on Debian/RPM for the same settings
# OUTDIR/settings.env            the same settings as a KEY=VALUE file (status, doctor)
# OUTDIR/settings.json           the JSON the module passed in
# OUTDIR/inet-body.nft           the inside of `table inet mullvad_allow_k8s { ... }`,
# OUTDIR/bridge-body.nft         and of the bridge table (empty without BRIDGE_TABLE), for
#                                networking.nftables.tables, which adds the braces itself
#
# With `runtime` (some setting is "auto": the module's runtime mode) the ruleset depends
# on the machine it runs on, which a build cannot see: only settings.json and
# settings.env (the values as given, "auto" included) are written, nothing is resolved,
# so nothing is detected here; mullvad-allow-k8s.service applies them at run time.
set -eu
json=$1
out=$2
mode=${3:-build}
mkdir -p "$out"
cp "$json" "$out/settings.json"

if [ "$mode" = runtime ]; then
    {
        echo "# Written by the NixOS module services.mullvadAllowK8s: change the options in"
        echo "# your NixOS configuration, not this file. Read by mullvad-allow-k8s status/doctor;"
        echo "# \"auto\" values are detected on this machine whenever they are read."
        mullvad-allow-k8s settings --raw --format env --settings none --json "$json"
    } >"$out/settings.env"
    exit 0
fi

if ! mullvad-allow-k8s generate --settings none --json "$json" >"$out/k8s_bypass_mullvad.nft"; then
    echo "services.mullvadAllowK8s: the generator rejected the settings above; its KEYs" \
        "are the module's options in camelCase (POD_CIDRS is podCidrs)." >&2
    exit 1
fi
{
    echo "# Written by the NixOS module services.mullvadAllowK8s: change the options in"
    echo "# your NixOS configuration, not this file. Read by mullvad-allow-k8s status/doctor."
    mullvad-allow-k8s settings --format env --settings none --json "$json"
} >"$out/settings.env"

# The insides of our tables, for networking.nftables.tables (which writes the
# `table ... { }` around them): printed by the generator, not cut out of the file.
for family in inet bridge; do
    mullvad-allow-k8s generate --settings none --json "$json" --table-body "$family" \
        >"$out/$family-body.nft"
done
