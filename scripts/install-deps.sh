#!/usr/bin/env bash
# install-deps.sh installs the Debian packages Wrenn builds, runs and tests
# with, and checks that Go is present. It is idempotent: when every package is
# installed it changes nothing and touches no network.
#
# It never starts system services: Debian's maintainer scripts would start the
# system Postgres and Redis on their default ports, while Wrenn runs its own
# instances under $WRENN_DIR/dev. A policy-rc.d that exits 101 forbids that for
# the duration of the install.
set -euo pipefail

# The packages the project needs, one per line, with why.
PACKAGES=(
	postgresql      # server binaries for the local stack and tests (/usr/lib/postgresql/*/bin)
	redis-server    # events, queues and caches of the control plane
	runc            # the OCI runtime sandboxes run in where no microVM can
	runsc           # gVisor, the second OCI runtime (WRENN_RUNTIME=runsc)
	e2fsprogs       # mkfs.ext4 -d, e2fsck, resize2fs for images and sandbox disks
	debootstrap     # builds the minimal base image
	util-linux      # flock, mount, losetup, unshare
	iproute2        # network namespaces and veth pairs
	iptables        # egress NAT and guard
	nftables        # egress NAT and guard
	socat           # port forwarding helpers
	busybox-static  # static tools for init and tests
	bindfs          # a FUSE mount for envd's network-filesystem watch test
	attr            # setfattr: the SDK test sets file metadata from inside
	ca-certificates # TLS to the Debian mirror and the Go module proxy
	curl            # downloads in scripts and the README's examples
	make            # the entry points
	gcc             # cgo for `go test -race` and sqlc
	libc6-dev       # headers for the same
	git             # make generate's diff check, build metadata
)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

missing=()
for pkg in "${PACKAGES[@]}"; do
	# dpkg-query prints "install ok installed" only for a fully installed package.
	if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) != "install ok installed" ]]; then
		missing+=("$pkg")
	fi
done

if ((${#missing[@]} > 0)); then
	[[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; run as root (sudo $0) to install them"
	log "installing: ${missing[*]}"
	policy=/usr/sbin/policy-rc.d
	had_policy=false
	if [[ -e $policy ]]; then
		had_policy=true
		cp -p "$policy" "$policy.wrenn-saved"
	fi
	restore_policy() {
		if $had_policy; then
			mv -f "$policy.wrenn-saved" "$policy"
		else
			rm -f "$policy"
		fi
	}
	trap restore_policy EXIT
	printf '#!/bin/sh\n# written by wrenn scripts/install-deps.sh: no service starts during the install\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
	restore_policy
	trap - EXIT
	log "installed ${#missing[@]} package(s)"
fi

# Node.js drives the E2B SDK compatibility test (test/e2bsdk): the e2b
# package needs Node >= 20.18.1. Debian 12's own nodejs is 18; where the apt
# sources carry a newer one (NodeSource's node_20.x, say) it is installed
# from there. Only that test needs it, so an old Node is a warning here and a
# failure of that test under CI=true.
node_min=20.18.1
node_ok() {
	command -v node >/dev/null 2>&1 || return 1
	local v
	v=$(node --version 2>/dev/null)
	v=${v#v}
	[[ $(printf '%s\n%s\n' "$node_min" "$v" | sort -V | head -n1) == "$node_min" ]]
}
if ! node_ok && [[ $(id -u) -eq 0 ]]; then
	log "installing nodejs (need >= $node_min for the E2B SDK test)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs >/dev/null ||
		log "warning: apt-get install nodejs failed"
fi
node_ok || log "warning: Node.js >= $node_min with npm is missing: the E2B SDK test (test/e2bsdk) will not run"

# Go is not taken from Debian (too old); it is expected in /usr/local/go.
export PATH="/usr/local/go/bin:$PATH"
if ! command -v go >/dev/null 2>&1; then
	die "Go is not installed: put a Go toolchain (the version in go.mod or newer) in /usr/local/go"
fi
want=$(awk '$1 == "go" { print $2; exit }' "$(dirname "$0")/../go.mod")
have=$(go env GOVERSION)
have=${have#go}
if [[ -n $want ]] && [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1) != "$want" ]]; then
	die "Go $have in $(command -v go) is older than go.mod's $want"
fi
log "all packages present; go $have"
