#!/usr/bin/env bash
# Builds the dfp container image from a host build, without pulling anything from a registry, and smoke-tests
# it. Idempotent: an unchanged base or image is not rebuilt (the smoke test runs every time).
#
#   scripts/image.sh [--no-test] [--test-only] [--force] [--keep]      (after cargo build --release --workspace)
#
#   1. lays out the binary, the example plugins, the libtorch libraries dfp loads, the pipelines and sample
#      data in a temporary build context (deploy/image/artifacts.sh: debug info stripped)
#   2. builds the runtime base from Debian packages (deploy/image/rootfs.sh: apt-get download + dpkg-deb, no
#      shell) and imports it with buildah as localhost/dfp-base:bookworm (skipped when unchanged)
#   3. builds the image from deploy/image/Containerfile, target `prebuilt` (the stages that pull are skipped),
#      as localhost/dfp:latest and localhost/dfp:<version> (skipped when unchanged)
#   4. smoke test, in containers as the image's user (10001, no network): dfp --version, the libraries the
#      loader resolves, dfp validate on every shipped pipeline, dfp plugin inspect, then the demo on a small
#      data set: generate, train, a retraining dry run (dfp retrain), score (alerts must come out), and a
#      second scoring on a read-only root
#
# --no-test    skip 4          --test-only  only 4, on the existing image
# --force      rebuild the base and the image even when unchanged
# --keep       keep the temporary folder (build context, root filesystem, smoke-test data) and print it
#
# CARGO_TARGET_DIR   where cargo put the build (default ~/.cache/dfp/target; dfp and plugins in release/)
# LIBTORCH           libtorch's folder with lib/ (default: scripts/libtorch.sh, ~/.cache/dfp/libtorch)
# DFP_IMAGE          image name (default localhost/dfp); DFP_BASE_IMAGE (default localhost/dfp-base:bookworm)
# DFP_IMAGE_EPOCHS   training epochs in the smoke test (default 5)
# TMPDIR             where the temporary folder goes (the build context holds ~0.4 GB while it runs)
# Runs as root (re-runs itself with sudo otherwise: root's buildah and podman hold the images); installs
# buildah and podman (and runc where crun cannot run containers) with apt-get when missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dfp/target}"
image=${DFP_IMAGE:-localhost/dfp}
base=${DFP_BASE_IMAGE:-localhost/dfp-base:bookworm}
epochs=${DFP_IMAGE_EPOCHS:-5}
debs=${XDG_CACHE_HOME:-$HOME/.cache}/dfp/image/debs
containerfile=deploy/image/Containerfile
build=1 test=1 force=0 keep=0

say() { printf '[image] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --no-test) test=0 ;;
    --test-only) build=0 ;;
    --force) force=1 ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

started=$(date +%s)
phase_start=$started
phase() { say "$*"; phase_start=$(date +%s); }       # announce a phase
took() { echo "$(( $(date +%s) - phase_start )) s"; }  # how long it has taken

# --- tools -------------------------------------------------------------------------------------------------
# Where the build and libtorch are, found as the calling user (so that sudo below keeps them).
if [ "$build" = 1 ] && [ -z "${LIBTORCH:-}" ]; then
  eval "$(scripts/libtorch.sh)"
fi
if [ "$(id -u)" != 0 ]; then
  # Root's buildah and podman: the base's files must belong to root and to uid 10001.
  command -v sudo >/dev/null 2>&1 || die "run as root (buildah and podman build and run the image as root)"
  say "re-running as root with sudo (the images go to root's container storage)"
  exec sudo CARGO_TARGET_DIR="$CARGO_TARGET_DIR" ${LIBTORCH:+LIBTORCH="$LIBTORCH"} TMPDIR="${TMPDIR:-/tmp}" \
    DFP_IMAGE="$image" DFP_BASE_IMAGE="$base" DFP_IMAGE_EPOCHS="$epochs" "$0" "${args[@]}"
fi
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v podman >/dev/null 2>&1 || missing+=(podman)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in objcopy strip dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install binutils dpkg coreutils)"
done

# The Containerfile writes the image's metadata (LABEL, ENV, WORKDIR, USER, ENTRYPOINT, CMD) in both runtime
# targets; they must not drift apart, or the image built here would differ from the one built from source.
metadata() { awk -v stage="$1" '/^FROM / { on = ($NF == stage); next } on && !/^(COPY|#)/ && NF' "$containerfile"; }
[ -n "$(metadata prebuilt)" ] && [ "$(metadata prebuilt)" = "$(metadata runtime)" ] ||
  die "$containerfile: the prebuilt and runtime targets' metadata differ:$(diff <(metadata prebuilt) <(metadata runtime) || true)"

# podman run: no network (the smoke test needs none; nor a CNI bridge or iptables), nothing pulled. Where
# podman's defaults cannot run a container, the smoke test probes and falls back (see probe_engine below).
podman_flags=()
run_flags=(--rm --network=none --pull=never)

work=$(mktemp -d "${TMPDIR:-/tmp}/dfp-image.XXXXXX")
cleanup() {
  if [ "$keep" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The ID of an image, or nothing.
image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
# Removes an image that lost its tags to a rebuild (unless a container still uses it).
drop_if_dangling() {
  local id=$1
  [ -n "$id" ] || return 0
  if [ -z "$(buildah inspect --type image --format '{{range .Names}}{{.}}{{end}}' "$id" 2>/dev/null)" ]; then
    buildah rmi "$id" >/dev/null 2>&1 && say "removed the previous image ${id:0:12}" || true
  fi
}

version=""
if [ "$build" = 1 ]; then
  # --- 1. artifacts -----------------------------------------------------------------------------------------
  [ -x "$CARGO_TARGET_DIR/release/dfp" ] || die "no $CARGO_TARGET_DIR/release/dfp: run cargo build --release --workspace first"
  phase "1/4 laying out dfp, plugins, libtorch, pipelines and sample data (build context: $work/context)"
  deploy/image/artifacts.sh --out "$work/context/prebuilt" --release "$CARGO_TARGET_DIR/release" --libtorch "$LIBTORCH"
  version=$("$work/context/prebuilt/opt/dfp/bin/dfp" --version | awk '{ print $NF }')
  say "   done in $(took)"

  # --- 2. base ----------------------------------------------------------------------------------------------
  phase "2/4 runtime base $base from Debian packages (cached in $debs)"
  mapfile -t packages < "$work/context/prebuilt/opt/dfp/share/debian-packages"
  DEBS_DIR=$debs deploy/image/rootfs.sh "$work/rootfs" "${packages[@]}"
  # What decides the base: every path with its type, mode, owner, link target and content.
  base_key=$(cd "$work/rootfs" && find . -printf '%p %y %m %U:%G %l\n' | LC_ALL=C sort | sha256sum | cut -c1-16)-$(
    cd "$work/rootfs" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  old_base=$(image_id "$base")
  if [ "$force" = 0 ] && [ -n "$old_base" ] && [ "$(label "$base" dfp.base.key)" = "$base_key" ]; then
    say "   $base is up to date (${old_base:0:12})"
  else
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    cp -a "$work/rootfs/." "$mnt/"
    buildah umount "$ctr" >/dev/null
    buildah config --os linux --arch "$(dpkg --print-architecture)" \
      --label dfp.base.key="$base_key" \
      --label org.opencontainers.image.description="dfp runtime base: Debian 12 packages ${packages[*]} ca-certificates netbase" \
      --created-by "deploy/image/rootfs.sh ${packages[*]}" --env PATH=/usr/bin --user 0:0 "$ctr"
    buildah commit --quiet --rm "$ctr" "$base" >/dev/null
    drop_if_dangling "$old_base"
    say "   built $base ($(image_id "$base" | cut -c1-12))"
  fi
  say "   done in $(took)"

  # --- 3. image ---------------------------------------------------------------------------------------------
  phase "3/4 image $image:latest and $image:$version (deploy/image/Containerfile, target prebuilt)"
  image_key=$( {
      sha256sum "$containerfile"
      image_id "$base"
      (cd "$work/context" && find . -printf '%p %y %m %l\n' | LC_ALL=C sort)
      (cd "$work/context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-32)
  old_image=$(image_id "$image:latest")
  if [ "$force" = 0 ] && [ -n "$old_image" ] && [ "$(label "$image:latest" dfp.image.key)" = "$image_key" ]; then
    say "   $image:latest is up to date (${old_image:0:12})"
    buildah tag "$image:latest" "$image:$version"
  else
    buildah bud --quiet --layers=false --pull=never -f "$containerfile" --target prebuilt \
      --build-arg BASE="$base" --label dfp.image.key="$image_key" \
      --label org.opencontainers.image.version="$version" \
      -t "$image:latest" -t "$image:$version" "$work/context" >/dev/null
    drop_if_dangling "$old_image"
    say "   built $image:latest ($(image_id "$image:latest" | cut -c1-12))"
  fi
  say "   done in $(took)"
  rm -rf "$work/context" "$work/rootfs"
fi

# Runs `dfp --version` in a container with podman's defaults; when that fails, with runc and explicit rlimits,
# which machines like the one this was written on need (a VM without systemd, cgroup v1 with a cgroup v2
# hierarchy beside it):
#   --runtime=runc     crun 1.8 (Debian 12's default runtime) refuses a hybrid cgroup v1/v2 layout whose v2
#                      side has controllers ("cgroups in hybrid mode not supported"), even with --cgroups=disabled
#   --ulimit nofile=N:N --ulimit nproc=4096:4096
#                      podman asks the runtime for nofile=1048576 and a large nproc; where the runtime may not
#                      raise limits that far (EPERM from setrlimit), use the current hard limit (nofile, at most
#                      65536) and 4096 processes (threads of uid 10001; dfp uses a few dozen)
probe_engine() {
  local out n
  if out=$(podman "${podman_flags[@]}" run "${run_flags[@]}" "$image:latest" --version 2>&1); then return 0; fi
  say "   podman run with its defaults fails here: ${out##*Error: }"
  if ! command -v runc >/dev/null 2>&1; then
    say "   installing runc (Debian package) to try it instead of crun"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc >/dev/null
  fi
  n=$(ulimit -Hn)
  if [ "$n" = unlimited ] || [ "$n" -gt 65536 ]; then n=65536; fi
  podman_flags=(--runtime=runc)
  run_flags+=(--ulimit "nofile=$n:$n" --ulimit nproc=4096:4096)
  out=$(podman "${podman_flags[@]}" run "${run_flags[@]}" "$image:latest" --version 2>&1) ||
    die "podman run fails here, with its defaults and with: podman ${podman_flags[*]} run ${run_flags[*]}: $out"
  say "   using: podman ${podman_flags[*]} run ${run_flags[*]}"
}

# --- size ------------------------------------------------------------------------------------------------------
[ -n "$(image_id "$image:latest")" ] || die "no image $image:latest (run without --test-only first)"
size=$(podman "${podman_flags[@]}" image inspect --format '{{.Size}}' "$image:latest")
base_size=$(podman "${podman_flags[@]}" image inspect --format '{{.Size}}' "$base" 2>/dev/null || echo 0)
say "   $image:latest: $(( size / 1000000 )) MB = base $(( base_size / 1000000 )) MB + dfp $(( (size - base_size) / 1000000 )) MB (its files: /opt/dfp/share/MANIFEST)"

# --- 4. smoke test ----------------------------------------------------------------------------------------------
if [ "$test" = 1 ]; then
  phase "4/4 smoke test: containers from $image:latest as its user, no network, data in a volume"
  data="$work/smoke"
  mkdir -p "$data"
  chown 10001:10001 "$data"
  probe_engine
  dfp() { podman "${podman_flags[@]}" run "${run_flags[@]}" -v "$data:/data" "$image:latest" "$@"; }
  step() { say "   \$ dfp $*"; }

  step --version
  dfp --version >&2
  [ "$(podman "${podman_flags[@]}" image inspect --format '{{.Config.User}}' "$image:latest")" = "10001:10001" ] ||
    die "the image does not run as 10001:10001"

  say "   libraries the loader resolves (LD_TRACE_LOADED_OBJECTS=1, as ldd would print them):"
  libs=$(podman "${podman_flags[@]}" run "${run_flags[@]}" -e LD_TRACE_LOADED_OBJECTS=1 "$image:latest")
  sed 's/^/[image]      /' <<< "$libs" >&2
  ! grep -q 'not found' <<< "$libs" || die "a library is missing in the image"
  grep -q '/opt/libtorch/torch/lib/libtorch_cpu.so' <<< "$libs" || die "libtorch_cpu.so is not the image's"

  # The pipelines the image ships (read from the image itself, which has no shell to expand a glob).
  mnt=$(podman "${podman_flags[@]}" image mount "$image:latest")
  mapfile -t pipelines < <(cd "$mnt/work" && ls pipelines/*.yaml)
  podman "${podman_flags[@]}" image unmount "$image:latest" >/dev/null
  [ "${#pipelines[@]}" -gt 0 ] || die "no pipelines in the image"
  step validate "${pipelines[@]}"
  dfp validate "${pipelines[@]}" >&2 || die "dfp validate failed in the image"

  step plugin inspect libdfp_plugin_okta.so
  # (captured first: `| head` would close the pipe while podman still writes, and podman exits 126)
  out=$(dfp plugin inspect libdfp_plugin_okta.so)
  head -n 3 <<< "$out" >&2

  # The README's first example with its defaults: sample data from /work/examples, output to /work/out.
  step run pipelines/failed-signins.yaml '(defaults: examples/data in, out/ in the workdir)'
  dfp run pipelines/failed-signins.yaml 2>&1 | tail -n 1 >&2

  step generate azure --out /data/azure --users 20 --days 30 --seed 1 --force
  dfp generate azure --out /data/azure --users 20 --days 30 --seed 1 --force | tail -n 1 >&2
  step run pipelines/azure-training.yaml --var input=/data/azure/train --var models=/data/models --var epochs="$epochs"
  dfp run pipelines/azure-training.yaml --var input=/data/azure/train --var models=/data/models \
    --var epochs="$epochs" --var report=/data/training-report.jsonl 2>&1 | tail -n 2 >&2
  # What the Helm chart's training CronJob runs: a retraining with the promotion check (a dry run here).
  step retrain pipelines/azure-training.yaml --registry /data/models --var input=/data/azure/train --end 2026-10-23 --window-days 22 --holdout-days 2 --dry-run
  dfp retrain pipelines/azure-training.yaml --registry /data/models --var input=/data/azure/train \
    --var epochs="$epochs" --end 2026-10-23 --window-days 22 --holdout-days 2 --dry-run \
    --report /data/retrain.jsonl 2>&1 | tail -n 1 >&2
  grep -q '"decision":"' "$data/retrain.jsonl" || die "dfp retrain decided nothing ($data/retrain.jsonl)"
  step run pipelines/azure-inference.yaml --var input=/data/azure/infer --var models=/data/models --var output=/data/alerts.jsonl --var threshold=2.0
  dfp run pipelines/azure-inference.yaml --var input=/data/azure/infer --var models=/data/models \
    --var output=/data/alerts.jsonl --var threshold=2.0 --var incidents=/data/incidents.jsonl \
    --var store=/data/alerts.db -q
  alerts=$(wc -l < "$data/alerts.jsonl" 2>/dev/null || echo 0)
  [ "$alerts" -gt 0 ] || die "the inference pipeline wrote no alerts ($data/alerts.jsonl is empty or missing)"
  owner=$(stat -c %u:%g "$data/alerts.jsonl")
  [ "$owner" = "10001:10001" ] || die "alerts.jsonl belongs to $owner, not to the image's user 10001:10001"
  step summary /data/alerts.jsonl --threshold 2.0
  out=$(dfp summary /data/alerts.jsonl --threshold 2.0)
  head -n 8 <<< "$out" >&2

  # Kubernetes runs it with readOnlyRootFilesystem: score again on a read-only root (podman mounts a tmpfs on
  # /tmp), with the volume as the working directory (the pipeline's relative out/ paths go there).
  step run /work/pipelines/azure-inference.yaml ... --threshold=-1   '(read-only root, workdir /data)'
  podman "${podman_flags[@]}" run "${run_flags[@]}" --read-only -v "$data:/data" -w /data "$image:latest" \
    run /work/pipelines/azure-inference.yaml --var input=/data/azure/infer --var models=/data/models \
    --var output=/data/scored.jsonl --var threshold=-1 --var incidents=/data/incidents-all.jsonl \
    --var store=/data/alerts-all.db -q
  scored=$(wc -l < "$data/scored.jsonl" 2>/dev/null || echo 0)
  [ "$scored" -gt "$alerts" ] || die "scoring every event wrote $scored rows (expected more than the $alerts alerts)"
  say "   smoke test passed: $alerts alerts (risk > 2) among $scored scored events, files owned by $owner; $(took)"
fi

say "image $image:latest${version:+ ($image:$version)}: $(( size / 1000000 )) MB; total $(( $(date +%s) - started )) s"
