#!/usr/bin/env bash
# Builds the dfp image's runtime base, a root filesystem made of Debian packages only (no shell, no package
# manager: like a distroless image), into ROOTFS:
#
#   the packages named (the ones providing the libraries dfp loads: deploy/image/artifacts.sh writes the
#   list), unpacked with dpkg-deb, without their maintainer scripts; ca-certificates (the Mozilla bundle at
#   /etc/ssl/certs/ca-certificates.crt, as update-ca-certificates would write it); netbase (/etc/services,
#   /etc/protocols); /etc/os-release from base-files; users root, dfp (10001) and nobody; /tmp (1777);
#   /var/lib/dfp and /var/cache/dfp (owned by dfp: state and caches under a read-only root filesystem);
#   /work (the image's workdir, owned by dfp); /var/lib/dpkg/status.d/<package> (each package's control
#   fields, so that image scanners see what is inside). Documentation is dropped except the copyright files.
#
#   deploy/image/rootfs.sh ROOTFS PACKAGE...     (as root; needs apt-get and dpkg-deb)
#
# DEBS_DIR  where the .deb files are downloaded and kept (default: a temporary folder); a package whose .deb
#           is already there is not downloaded again, so that a second run needs no network.
# Versions: apt's candidate (security updates included), else the installed one. Built on Debian 12, for a
# binary built on Debian 12: glibc and libstdc++ must be at least as new as the ones it was linked against.
set -euo pipefail
log() { printf '[rootfs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
case "${1:-}" in -h|--help|"") sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; [ -n "${1:-}" ]; exit $? ;; esac
rootfs=$1; shift
[ "$(id -u)" = 0 ] || die "run as root (the files must belong to root and to dfp)"
for tool in apt-get apt-cache dpkg-deb dpkg-query tar; do
  command -v "$tool" >/dev/null || die "$tool not found (a Debian system is needed)"
done
arch=$(dpkg --print-architecture)
debs=${DEBS_DIR:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -n "$debs" ] || debs=$tmp/debs
mkdir -p "$debs"

# The packages, and the ones every image gets (base-files only for /etc/os-release).
packages=("$@" ca-certificates netbase)
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

# The version of each package: apt's candidate (the newest the configured archives offer, security updates
# included), else the installed one. One apt-cache call for all (each call parses the package lists).
declare -A version=() deb=()
want=("${packages[@]}" base-files)
while read -r pkg ver; do
  [ -n "$ver" ] && [ "$ver" != "(none)" ] && version[$pkg]=$ver
done < <(apt-cache policy "${want[@]}" 2>/dev/null | awk '/^[^ ].*:$/ { sub(/:$/, ""); name = $0 } /^  Candidate:/ { print name, $2 }')
missing=()
for pkg in "${want[@]}"; do
  if [ -z "${version[$pkg]:-}" ]; then
    version[$pkg]=$(dpkg-query -W -f '${db:Status-Status} ${Version}' "$pkg" 2>/dev/null | sed -n 's/^installed //p')
  fi
  [ -n "${version[$pkg]}" ] || die "apt knows no version of $pkg (run apt-get update)"
  for a in "$arch" all; do
    f="$debs/${pkg}_${version[$pkg]//:/%3a}_$a.deb"
    if [ -f "$f" ]; then deb[$pkg]=$f; fi
  done
  [ -n "${deb[$pkg]:-}" ] || missing+=("$pkg=${version[$pkg]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "downloading ${missing[*]}"
  # -o APT::Sandbox::User=root: the download folder need not be readable by the _apt user.
  (cd "$debs" && apt-get download -q=2 -o APT::Sandbox::User=root "${missing[@]}" >&2) || die "apt-get download failed"
  for pkg in "${want[@]}"; do
    for a in "$arch" all; do
      f="$debs/${pkg}_${version[$pkg]//:/%3a}_$a.deb"
      if [ -f "$f" ]; then deb[$pkg]=$f; fi
    done
    [ -n "${deb[$pkg]:-}" ] || die "no ${pkg}_${version[$pkg]}_*.deb in $debs after apt-get download"
  done
fi

rm -rf "$rootfs"
mkdir -p "$rootfs"
cd "$rootfs"
# Debian 12 is merged-/usr: /lib, /bin, /sbin and /lib64 are links into /usr.
mkdir -p usr/bin usr/sbin usr/lib usr/lib64
for d in bin sbin lib lib64; do ln -s "usr/$d" "$d"; done

mkdir -p var/lib/dpkg/status.d
for pkg in "${packages[@]}"; do
  dpkg-deb --fsys-tarfile "${deb[$pkg]}" | tar -x --keep-directory-symlink --same-owner -f - -C "$rootfs"
  dpkg-deb -f "${deb[$pkg]}" > "var/lib/dpkg/status.d/$pkg"
  log "unpacked $(basename "${deb[$pkg]}")"
done
base_files=${deb[base-files]}
mkdir -p "$tmp/base-files"
dpkg-deb -x "$base_files" "$tmp/base-files"
install -D -m 0644 "$tmp/base-files/usr/lib/os-release" usr/lib/os-release
ln -sf ../usr/lib/os-release etc/os-release
install -m 0644 "$tmp/base-files/etc/debian_version" etc/debian_version
dpkg-deb -f "$base_files" > var/lib/dpkg/status.d/base-files

# What update-ca-certificates does by default: every Mozilla certificate into one bundle (and the OpenSSL
# default locations, as Debian's openssl package links them).
mkdir -p etc/ssl/certs usr/lib/ssl
find usr/share/ca-certificates -name '*.crt' | LC_ALL=C sort | xargs cat > etc/ssl/certs/ca-certificates.crt
[ -s etc/ssl/certs/ca-certificates.crt ] || die "no CA certificates in the ca-certificates package"
ln -sfn /etc/ssl/certs usr/lib/ssl/certs
ln -sf /etc/ssl/certs/ca-certificates.crt usr/lib/ssl/cert.pem
rm -rf usr/share/ca-certificates usr/sbin/update-ca-certificates etc/ca-certificates

# Drop what nothing runs here: documentation (keeping the licences), locales, iconv modules (Rust and
# libtorch do not use iconv), gdb helpers.
find usr/share/doc -mindepth 2 ! -name copyright \( -type f -o -type l \) -delete 2>/dev/null || true
find usr/share/doc -xtype l -delete 2>/dev/null || true
find usr/share/doc -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf usr/share/man usr/share/info usr/share/lintian usr/share/locale usr/share/gdb usr/share/gcc \
  usr/lib/*-linux-gnu/gconv usr/share/bug

cat > etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
dfp:x:10001:10001:dfp:/work:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat > etc/group <<'GROUP'
root:x:0:
dfp:x:10001:
nogroup:x:65534:
GROUP
cat > etc/nsswitch.conf <<'NSS'
passwd: files
group:  files
hosts:  files dns
NSS
[ -f etc/ld.so.conf ] || echo 'include /etc/ld.so.conf.d/*.conf' > etc/ld.so.conf
mkdir -p root tmp var/tmp work var/lib/dfp var/cache/dfp etc/ssl/private
chmod 0700 root
chmod 1777 tmp var/tmp
chown 10001:10001 work var/lib/dfp var/cache/dfp
chmod 0755 work var/lib/dfp var/cache/dfp
compgen -G 'usr/lib*/ld-linux*.so.*' >/dev/null || compgen -G 'usr/lib/*-linux-gnu/ld-linux*.so.*' >/dev/null ||
  die "the dynamic loader is missing (is libc6 in the list?)"
log "root filesystem in $rootfs: $(du -sh "$rootfs" | cut -f1), packages: ${packages[*]} base-files (os-release)"
