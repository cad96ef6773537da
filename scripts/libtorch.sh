#!/usr/bin/env bash
# Installs libtorch for the `tch` crate from the PyPI `torch` wheel (the one libtorch source reachable from
# package registries), into a stable folder outside the repository. Idempotent: once installed it only
# re-checks and prints the environment (well under a second).
#
#   eval "$(scripts/libtorch.sh)"      # stdout: export lines; progress goes to stderr
#
# TORCH_VERSION   2.11.0 (the version tch 0.24 is built against)
# DFP_LIBTORCH_FLAVOR  cpu (default): the wheel without dependencies plus the two CUDA runtime libraries
#                 libtorch_cpu.so is linked against (~1.3 GB). cuda: every NVIDIA wheel (~4.6 GB), to use a GPU.
# DFP_LIBTORCH_ROOT    install root (default ~/.cache/dfp/libtorch)
set -euo pipefail
version=${TORCH_VERSION:-2.11.0}
flavor=${DFP_LIBTORCH_FLAVOR:-cpu}
root=${DFP_LIBTORCH_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp/libtorch}
py=${PYTHON:-python3}
dest="$root/torch-$version-$flavor"
log() { echo "[libtorch] $*" >&2; }
pip_install() {
  local opts=(--quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore)
  # Debian marks its Python as externally managed; a --target install touches nothing of it.
  "$py" -m pip install "${opts[@]}" "$@" >&2 || "$py" -m pip install "${opts[@]}" --break-system-packages "$@" >&2
}

if [ ! -f "$dest/.complete" ]; then
  log "installing torch $version ($flavor) into $dest"
  start=$(date +%s)
  mkdir -p "$root"
  rm -rf "$dest.partial"
  case "$flavor" in
    cuda) pip_install --target "$dest.partial" "torch==$version" ;;
    cpu)
      pip_install --no-deps --target "$dest.partial" "torch==$version"
      metadata=$(ls "$dest.partial"/torch-*.dist-info/METADATA)
      # torch 2.11 pins a `cuda-toolkit[...]==X` metapackage; take the same pin for the two runtime libraries.
      pin=$(sed -n 's/^Requires-Dist: cuda-toolkit\[[^]]*\]\(==[^;[:space:]]*\).*/\1/p' "$metadata" | head -n 1)
      if [ -n "$pin" ]; then
        pip_install --target "$dest.partial" "cuda-toolkit[cudart,cupti]$pin"
      else
        mapfile -t pins < <(sed -n 's/^Requires-Dist: \(nvidia-cuda-\(runtime\|cupti\)[^;[:space:]]*\).*/\1/p' "$metadata")
        if [ "${#pins[@]}" -gt 0 ]; then pip_install --no-deps --target "$dest.partial" "${pins[@]}"; fi
      fi
      ;;
    *) log "unknown DFP_LIBTORCH_FLAVOR=$flavor (cpu or cuda)"; exit 1 ;;
  esac
  got=$(sed -n 's/^Version: //p' "$dest.partial"/torch-*.dist-info/METADATA)
  if [ "${got%%+*}" != "$version" ]; then log "the wheel is torch $got, expected $version"; exit 1; fi
  # torch-sys checks this file when LIBTORCH points at a wheel.
  echo "$got" > "$dest.partial/torch/build-version"
  touch "$dest.partial/.complete"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  log "installed in $(( $(date +%s) - start )) s ($(du -sh "$dest" | cut -f1))"
fi

unresolved=$(ldd "$dest/torch/lib/libtorch_cpu.so" | grep 'not found' || true)
if [ -n "$unresolved" ]; then
  log "libtorch_cpu.so cannot resolve:"
  echo "$unresolved" >&2
  exit 1
fi

echo "export LIBTORCH=\"$dest/torch\""
echo "export LIBTORCH_CXX11_ABI=1"
echo "unset LIBTORCH_USE_PYTORCH"
