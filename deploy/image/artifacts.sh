#!/usr/bin/env bash
# Lays out what the dfp image ships, under OUT, at the paths it gets in the image:
#
#   OUT/opt/dfp/bin/dfp                  the binary (debug info stripped; the symbol table stays for backtraces)
#   OUT/opt/dfp/plugins/*.so             the example plugins (every cdylib in dfp-plugins/ but the test-only ones)
#   OUT/opt/libtorch/torch/lib/*.so*     only the libtorch libraries the binary loads (ldd), in the wheel's own
#   OUT/opt/libtorch/nvidia/*/lib/*.so*  layout so that their $ORIGIN/../../nvidia/... runpaths still resolve
#   OUT/work/pipelines, OUT/work/examples/data   the shipped pipelines and sample data (the image's workdir)
#   OUT/opt/dfp/share/MANIFEST           every file above with its size; debian-packages: what the base needs
#
# Used by the Containerfile's build stage and by scripts/image.sh (from a host build), so both ship the same.
#
#   deploy/image/artifacts.sh --out DIR [--release DIR] [--libtorch DIR] [--flavor cpu|cuda] [--no-strip]
#
# --release   the cargo profile folder with dfp and the plugins (default $CARGO_TARGET_DIR/release)
# --libtorch  libtorch's folder, the one with lib/ (default $LIBTORCH)
# --flavor    cpu (default): the libraries ldd resolves for dfp. cuda: every library of torch/lib and the NVIDIA
#             wheels, since a `--features cuda` build loads libtorch_cuda.so (and through it cuDNN, cuBLAS, ...)
#             at run time with dlopen, which ldd does not see
# --no-strip  ship the binaries as built (with debug info: dfp is ~6x larger)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out="" release="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp/target}/release"
libtorch="${LIBTORCH:-}" flavor=cpu strip=1
# Plugins built only for dfp's own tests; not shipped.
test_only_plugins=(testkit wrong-abi)
log() { printf '[artifacts] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    --libtorch) libtorch=$2; shift 2 ;;
    --flavor) flavor=$2; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$out" ] || die "--out DIR is required"
[ -x "$release/dfp" ] || die "no dfp binary in $release (run cargo build --release --workspace)"
[ -n "$libtorch" ] && [ -d "$libtorch/lib" ] || die "libtorch not found (--libtorch DIR or LIBTORCH; eval \"\$(scripts/libtorch.sh)\")"
case "$flavor" in cpu|cuda) ;; *) die "--flavor cpu or cuda, not $flavor" ;; esac
libtorch=$(cd "$libtorch" && pwd -P)
wheel=$(dirname "$libtorch")       # the pip --target folder: torch/ and nvidia/ side by side

# A copy that is stripped (or hard-linked when possible and not stripped, to spare the disk).
put() { # SRC DEST MODE(debug|all)
  local src=$1 dest=$2 mode=$3
  mkdir -p "$(dirname "$dest")"
  rm -f "$dest"
  if [ "$strip" = 1 ]; then
    case "$mode" in
      debug) objcopy --strip-debug "$src" "$dest" ;;
      all) strip --strip-unneeded -o "$dest" "$src" ;;
    esac
  else
    ln "$src" "$dest" 2>/dev/null || cp -p "$src" "$dest"
  fi
  chmod 0755 "$dest"
}

rm -rf "$out"
mkdir -p "$out/opt/dfp/bin" "$out/opt/dfp/plugins" "$out/opt/dfp/share" "$out/work"
put "$release/dfp" "$out/opt/dfp/bin/dfp" debug

plugins=()
for toml in "$repo"/dfp-plugins/*/Cargo.toml; do
  dir=$(basename "$(dirname "$toml")")
  grep -q 'crate-type *= *\[.*"cdylib"' "$toml" || continue
  for t in "${test_only_plugins[@]}"; do [ "$dir" = "$t" ] && continue 2; done
  name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$toml" | head -n 1)
  lib="lib${name//-/_}.so"
  [ -f "$release/$lib" ] || die "plugin $lib not in $release (cargo build --release --workspace builds it)"
  put "$release/$lib" "$out/opt/dfp/plugins/$lib" debug
  plugins+=("$lib")
done

# libtorch: what the dynamic loader resolves for dfp (and the plugins) inside the wheel folder. Paths are
# normalised without resolving symlinks, so that each library keeps the name (soname) it is looked up by.
declare -A torch_libs=()
system_libs=()
resolved=$(for f in "$release/dfp" "${plugins[@]/#/$release/}"; do
  ldd "$f" | awk '/=> not found/ { print "NOTFOUND:" $1; next }
                  $2 == "=>" && $3 ~ /^\// { print $3; next }
                  $1 ~ /^\// { print $1 }'
done | sort -u)
while read -r p; do
  case "$p" in
    NOTFOUND:*) die "ldd: ${p#NOTFOUND:} not found for dfp or a plugin" ;;
    *) p=$(realpath -s "$p") ;;
  esac
  case "$p" in
    "$wheel"/*) torch_libs["${p#"$wheel"/}"]=1 ;;
    *) system_libs+=("$p") ;;
  esac
done <<< "$resolved"
if [ "$flavor" = cuda ]; then
  while read -r p; do torch_libs["${p#"$wheel"/}"]=1; done < <(
    find "$libtorch/lib" "$wheel/nvidia" -maxdepth 3 -name '*.so*' \( -type f -o -type l \) 2>/dev/null |
      grep -v '/libtorch_python\.so$')
fi
for rel in "${!torch_libs[@]}"; do
  put "$wheel/$rel" "$out/opt/libtorch/$rel" all
done
# torch-sys reads this; the CUDA loader looks for $LIBTORCH/lib/libtorch_cuda.so.
if [ -f "$libtorch/build-version" ]; then
  install -m 0644 "$libtorch/build-version" "$out/opt/libtorch/torch/build-version"
fi

# The Debian packages that provide the other libraries (and the loader): the runtime base's package list.
packages=()
for p in "${system_libs[@]}"; do
  # usrmerge: dpkg may know a library as /lib/x86_64-linux-gnu/... while ldd prints /usr/lib/..., or a link.
  owner=""
  for candidate in "$p" "${p#/usr}" "$(readlink -f "$p")" "$(readlink -f "$p" | sed 's,^/usr,,')"; do
    owner=$(dpkg -S "$candidate" 2>/dev/null | head -n 1) && [ -n "$owner" ] && break
  done
  [ -n "$owner" ] || die "no Debian package owns $p"
  packages+=("${owner%%:*}")
done
printf '%s\n' "${packages[@]}" | sort -u > "$out/opt/dfp/share/debian-packages"

mkdir -p "$out/work/examples"
cp -a "$repo/pipelines" "$out/work/pipelines"
cp -a "$repo/examples/data" "$out/work/examples/data"
cp -a "$repo/README.md" "$out/opt/dfp/share/README.md"
# Read-only for everyone but root in the image, whatever the checkout's umask was.
chmod -R u=rwX,go=rX "$out"

(cd "$out" && find . -type f ! -path ./opt/dfp/share/MANIFEST -printf '%s\t/%P\n' | sort -k2) > "$out/opt/dfp/share/MANIFEST"
log "dfp $(du -h "$out/opt/dfp/bin/dfp" | cut -f1), plugins: ${plugins[*]:-none}"
log "libtorch ($flavor): $(cd "$out/opt/libtorch" && find . -name '*.so*' -printf '%P ' | sort) — $(du -sh "$out/opt/libtorch" | cut -f1)"
log "Debian packages for the base: $(tr '\n' ' ' < "$out/opt/dfp/share/debian-packages")"
log "total $(du -sh "$out" | cut -f1) in $out"
