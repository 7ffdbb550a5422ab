#!/bin/sh
# Idempotent set-up used by `make test` and `make demo`: checks the host can
# work, installs the distro packages (bcc, kernel headers, iproute2, ssh), makes
# .venv on the system python with the distro's site-packages (for bcc), installs
# the project editable with its test extras, and generates the gRPC stubs.
# A second run finds everything done and finishes in about a second.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAMPS="$ROOT/.venv/.stamps"
SYSTEM_PYTHON=/usr/bin/python3

die() { echo "bootstrap: $*" >&2; exit 1; }
say() { echo "bootstrap: $*"; }

# ---- can this host work at all? -----------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (loading BPF programs and creating cgroups needs it); try: sudo make ..."
[ -r /sys/kernel/btf/vmlinux ] || die "the kernel has no BTF (/sys/kernel/btf/vmlinux missing; needs CONFIG_DEBUG_INFO_BTF=y)"
grep -q ' cgroup2 ' /proc/mounts || die "no cgroup v2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup)"
kver=$(uname -r | sed 's/[^0-9.].*//')
kmaj=${kver%%.*}; krest=${kver#*.}; kmin=${krest%%.*}
if [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -lt 15 ]; }; then
    die "kernel $(uname -r) is too old: Linux 5.15 or newer is needed (ring buffers, cgroup socket storage)"
fi
command -v apt-get >/dev/null || die "this bootstrap supports Debian/Ubuntu (apt-get not found); see README for the packages"

# ---- distro packages ------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_updated=""
apt_update() {
    [ -n "$apt_updated" ] && return 0
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
}
# A machine that never ran apt-get update cannot even look packages up.
ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1 || apt_update

# `bootstrap.sh --containers` (make demo-container) also installs the container runtimes.
packages="python3-bpfcc python3-venv iproute2 openssh-server openssh-client procps openssl systemd gzip"
[ "${1:-}" = "--containers" ] && packages="$packages $(grep -v '^#' "$ROOT/scripts/container-packages")"
missing=""
for pkg in $packages; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
release=$(uname -r)
generic_headers() { ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1; }
if [ ! -e "/lib/modules/$release/build/include" ]; then
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        missing="$missing linux-headers-$release"        # the exact headers, when the distro has them
    elif [ -z "$(generic_headers)" ]; then
        if apt-cache show linux-headers-amd64 >/dev/null 2>&1; then
            missing="$missing linux-headers-amd64"       # Debian's generic headers
        elif apt-cache show linux-headers-generic >/dev/null 2>&1; then
            missing="$missing linux-headers-generic"     # Ubuntu's
        else
            die "no kernel headers package found for $release (bcc needs a header tree)"
        fi
    fi
fi
if [ -n "$missing" ]; then
    say "installing$missing"
    apt_update
    # No init system runs services here: policy-rc.d keeps the packages' scripts
    # (docker.io's) from trying to start theirs, which fails the install.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    installed=0
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null || installed=$?
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$installed" -eq 0 ] || die "apt-get install$missing failed"
fi

# ---- kernel header tree for bcc ------------------------------------------
# Our BPF C takes no kernel-internal layout from these headers (only UAPI
# structs, helpers and tracepoint formats), so the distro's generic headers are
# safe when no package matches the running kernel exactly.
if [ ! -e "/lib/modules/$release/build/include" ]; then
    build=$(generic_headers || true)
    [ -n "$build" ] || die "no kernel headers found under /usr/src after installing them"
    source_dir=""
    case "$build" in
        *-amd64) source_dir="${build%-amd64}-common" ;;
        *-generic) source_dir="${build%-generic}" ;;
    esac
    [ -d "$source_dir" ] || source_dir="$build"
    mkdir -p "/lib/modules/$release"
    ln -sfn "$build" "/lib/modules/$release/build"
    ln -sfn "$source_dir" "/lib/modules/$release/source"
    say "linked $build as the header tree of kernel $release (no exact headers for it)"
fi

# ---- tracefs (bcc reads tracepoint formats there) -------------------------
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing || die "tracefs is not mounted and mounting it failed"
fi

# ---- venv, package, stubs -----------------------------------------------
"$SYSTEM_PYTHON" -c 'import bcc' 2>/dev/null || die "python3-bpfcc is installed but 'import bcc' fails on $SYSTEM_PYTHON"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv on $SYSTEM_PYTHON with system site-packages"
    "$SYSTEM_PYTHON" -m venv --system-site-packages .venv
fi
mkdir -p "$STAMPS"
deps_hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$STAMPS/deps-$deps_hash" ]; then
    say "installing enforcer (editable) with test extras"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' || die "pip install failed"
    rm -f "$STAMPS"/deps-*
    touch "$STAMPS/deps-$deps_hash"
fi
proto_hash=$(cat proto/enforcer/v1/*.proto | sha256sum | cut -c1-16)
if [ ! -f "$STAMPS/proto-$proto_hash" ] || [ ! -f enforcer/v1/enforcer_pb2.py ]; then
    say "generating gRPC stubs from proto/"
    .venv/bin/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
        proto/enforcer/v1/enforcer.proto || die "protoc failed"
    rm -f "$STAMPS"/proto-*
    touch "$STAMPS/proto-$proto_hash"
fi
