#!/usr/bin/env bash
# build-image.sh builds Wrenn's `minimal` base image: a Debian stable minbase
# tree with the tools every sandbox needs, a passwordless-sudo `wrenn-user`,
# envd and wrenn-init, packed into an ext4 file the agent mounts read-only and
# shares between sandboxes.
#
#   scripts/build-image.sh <out-dir> <envd-binary> <wrenn-init-binary>
#
# Produces <out-dir>/rootfs.ext4 and <out-dir>/rootfs.ext4.stamp. The stamp is
# a sha256 over this script, both binaries and the package list; when it
# matches, the script exits at once. The debootstrap tree (the slow part, a few
# minutes) is cached under ${WRENN_CACHE_DIR:-/var/lib/wrenn/cache} keyed by the
# package list and the base section of this script, so a new envd only re-runs
# the cheap final layer. The image is written to a temporary file and renamed,
# so an interrupted build never leaves a half image; nothing stays mounted.
#
# Needs root, debootstrap, e2fsprogs (mkfs.ext4 -d, e2fsck, resize2fs),
# util-linux (flock) and network access to a Debian mirror on a cache miss.
set -euo pipefail

readonly SUITE=bookworm
readonly INCLUDE=sudo,socat,curl,ca-certificates,procps,iproute2,python3
readonly USER_NAME=wrenn-user

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
	printf 'usage: %s <out-dir> <envd-binary> <wrenn-init-binary>\n' "$0" >&2
	exit 2
}

[[ $# -eq 3 ]] || usage
out_dir=$1
envd_bin=$2
init_bin=$3
[[ -f $envd_bin ]] || die "envd binary $envd_bin is not a file"
[[ -f $init_bin ]] || die "wrenn-init binary $init_bin is not a file"
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot and file ownership need it)"
for tool in debootstrap mkfs.ext4 e2fsck resize2fs dumpe2fs flock sha256sum tar chroot; do
	command -v "$tool" >/dev/null || die "$tool not found; install debootstrap, e2fsprogs and util-linux"
done

script_path=$(readlink -f "${BASH_SOURCE[0]}")
cache_dir=${WRENN_CACHE_DIR:-/var/lib/wrenn/cache}
mkdir -p "$out_dir" "$cache_dir"
out_dir=$(readlink -f "$out_dir")
image=$out_dir/rootfs.ext4
stamp_file=$image.stamp

# One build per output directory at a time; a second caller waits and then
# usually finds the image up to date.
exec 9>"$out_dir/.build.lock"
flock 9

stamp=$({
	sha256sum <"$script_path"
	sha256sum <"$envd_bin"
	sha256sum <"$init_bin"
	printf '%s\n' "$INCLUDE"
} | sha256sum | cut -d' ' -f1)

if [[ -f $image && -f $stamp_file && $(<"$stamp_file") == "$stamp" ]]; then
	log "$image is up to date (stamp $stamp)"
	exit 0
fi

# work is the scratch directory of this run; cleanup unmounts anything left
# under it (debootstrap mounts /proc, /sys and maybe a bind of /dev in the
# target while it configures packages, and a killed run can leave them) and
# refuses to delete while a mount remains, so a bind-mounted host /dev can
# never be removed through it.
work=""
cleanup() {
	local rc=$?
	if [[ -n $work && -d $work ]]; then
		local mnt
		# Deepest first; mountinfo field 5 is the mount point.
		while read -r mnt; do
			umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
		done < <(awk -v w="$work" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
		if awk -v w="$work" '$5 == w || index($5, w "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
			log "error: mounts remain under $work; not deleting it"
			rc=1
		else
			rm -rf --one-file-system "$work"
		fi
	fi
	rm -f "$out_dir/.rootfs.ext4.tmp.$$" "$cache_dir/.base.tar.tmp.$$"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
work=$(mktemp -d "$cache_dir/work.XXXXXX")

# debian_mirror prints the first Debian archive URI from the machine's apt
# sources (one-line and deb822 formats), so builds use the same mirror apt
# does; http://deb.debian.org/debian otherwise.
debian_mirror() {
	local f uri
	shopt -s nullglob
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		uri=$(awk '
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*deb[[:space:]]/ {
				for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { print $i; break }
				next
			}
			/^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
		' "$f" | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true)
		if [[ -n $uri ]]; then
			printf '%s\n' "${uri%/}"
			shopt -u nullglob
			return
		fi
	done
	shopt -u nullglob
	printf '%s\n' http://deb.debian.org/debian
}

# BEGIN BASE: everything from here to END BASE shapes the cached debootstrap
# tree; its text is part of the cache key, so editing it rebuilds the tree.
arch=$(dpkg --print-architecture)
base_key=$({
	sed -n '/^# BEGIN BASE/,/^# END BASE/p' "$script_path"
	printf '%s %s %s\n' "$SUITE" "$arch" "$INCLUDE"
} | sha256sum | cut -c1-16)
base_tar=$cache_dir/debootstrap-$SUITE-$arch-$base_key.tar

build_base() {
	local mirror tree=$work/base
	mirror=$(debian_mirror)
	log "debootstrap $SUITE ($arch) from $mirror into $tree (a few minutes)"
	debootstrap --variant=minbase --arch="$arch" --include="$INCLUDE" \
		"$SUITE" "$tree" "$mirror" >"$work/debootstrap.log" 2>&1 || {
		tail -n 30 "$work/debootstrap.log" >&2
		[[ -f $tree/debootstrap/debootstrap.log ]] && tail -n 30 "$tree/debootstrap/debootstrap.log" >&2
		die "debootstrap failed"
	}
	# Package caches and lists are not part of an image; templates run
	# apt-get update themselves.
	chroot "$tree" apt-get clean
	rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin \
		"$tree"/var/cache/debconf/*-old "$tree"/var/log/*.log "$tree"/var/log/apt/*
	mkdir -p "$tree/var/lib/apt/lists/partial"
	tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$tree" \
		-cpf "$cache_dir/.base.tar.tmp.$$" .
	mv -f "$cache_dir/.base.tar.tmp.$$" "$base_tar"
	rm -rf --one-file-system "$tree"
	log "cached base tree as $base_tar"
}
# END BASE

# The cache has its own lock: image builds for different out dirs share it.
exec 8>"$cache_dir/.base.lock"
flock 8
if [[ ! -f $base_tar ]]; then
	build_base
else
	log "using cached base tree $base_tar"
fi
flock -u 8

# Final layer: cheap, re-run whenever envd, wrenn-init or this script change.
tree=$work/tree
mkdir "$tree"
tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$tree" -xpf "$base_tar"

if ! chroot "$tree" id -u "$USER_NAME" >/dev/null 2>&1; then
	chroot "$tree" useradd --create-home --home-dir "/home/$USER_NAME" --shell /bin/bash "$USER_NAME"
fi
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$USER_NAME" >"$tree/etc/sudoers.d/$USER_NAME"
chmod 0440 "$tree/etc/sudoers.d/$USER_NAME"
chroot "$tree" visudo -cq -f "/etc/sudoers.d/$USER_NAME" || die "sudoers file for $USER_NAME does not parse"

install -m 0755 -o root -g root "$envd_bin" "$tree/usr/local/bin/envd"
install -m 0755 -o root -g root "$init_bin" "$tree/usr/local/bin/wrenn-init"

# wrenn-init sets the real hostname and DNS at boot; these are placeholders so
# the tree never carries the build host's names.
printf 'wrenn\n' >"$tree/etc/hostname"
cat >"$tree/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	wrenn
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
rm -f "$tree/etc/resolv.conf"
: >"$tree/etc/resolv.conf"

# Size: the tree plus 30 % and 256 MiB of headroom for mkfs, then shrunk to
# the minimum; the agent grows images to the configured disk size at start.
used=$(du -s --block-size=1 --one-file-system "$tree" | cut -f1)
size=$((used * 13 / 10 + 256 * 1024 * 1024))
size=$(((size + 4095) / 4096 * 4096))
tmp_image=$out_dir/.rootfs.ext4.tmp.$$
rm -f "$tmp_image"
truncate -s "$size" "$tmp_image"
log "mkfs.ext4 of $((used / 1024 / 1024)) MiB tree into a $((size / 1024 / 1024)) MiB file"
mkfs.ext4 -q -F -b 4096 -d "$tree" -L rootfs "$tmp_image"
# e2fsck exits 1 when it corrected something, which -y allows; >1 is an error.
fsck_rc=0
e2fsck -fy "$tmp_image" >/dev/null 2>&1 || fsck_rc=$?
((fsck_rc <= 1)) || die "e2fsck of the new image failed with status $fsck_rc"
resize2fs -M "$tmp_image" >/dev/null 2>&1 || die "resize2fs -M of the new image failed"
# resize2fs shrinks the filesystem but not always the file; cut it to the
# filesystem's size.
block_count=$(dumpe2fs -h "$tmp_image" 2>/dev/null | awk -F': *' '/^Block count:/ { print $2 }')
block_size=$(dumpe2fs -h "$tmp_image" 2>/dev/null | awk -F': *' '/^Block size:/ { print $2 }')
truncate -s $((block_count * block_size)) "$tmp_image"

# The old stamp goes first: an interruption after it leaves a rebuild, never
# a stale stamp on a new image or a new stamp on an old one.
rm -f "$stamp_file"
mv -f "$tmp_image" "$image"
printf '%s\n' "$stamp" >"$stamp_file.tmp.$$"
mv -f "$stamp_file.tmp.$$" "$stamp_file"
log "built $image ($((block_count * block_size / 1024 / 1024)) MiB, stamp $stamp)"
