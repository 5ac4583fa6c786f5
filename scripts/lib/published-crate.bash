# The published source of a crate, as crates.io has it: downloaded by cargo
# (which checks it against the registry's checksum) and copied out without
# Cargo's own metadata (.cargo-ok, .cargo_vcs_info.json, Cargo.lock,
# Cargo.toml.orig), which vendor/ does not keep either. Source it.
#
#   published_crate NAME VERSION DEST    copies it to DEST (which must not exist)

published_crate() {
  local name=$1 version=$2 dest=$3 probe
  probe=$(mktemp -d)
  mkdir -p "$probe/src"
  printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = { version = "=%s", default-features = false }\n' \
    "$name" "$version" > "$probe/Cargo.toml"
  : > "$probe/src/lib.rs"
  if ! (cd "$probe" && cargo fetch --quiet); then
    rm -rf "$probe"
    echo "cargo could not download $name $version" >&2
    return 1
  fi
  rm -rf "$probe"
  local published
  published=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$name-$version" 2>/dev/null | head -1)
  if [ ! -d "$published" ]; then
    echo "$name $version was not unpacked by cargo" >&2
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  cp -r "$published" "$dest"
  rm -f "$dest"/{.cargo-ok,.cargo_vcs_info.json,Cargo.lock,Cargo.toml.orig}
}
