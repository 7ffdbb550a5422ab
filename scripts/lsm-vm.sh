#!/bin/bash
# Run a command on Debian's 6.1 kernel with BPF-LSM enabled, under qemu (TCG),
# with this machine's root filesystem underneath (read-only 9p, a tmpfs overlay
# on top), so the VM uses this checkout, its .venv, bcc and the exact
# linux-headers of that kernel. This is how the BPF-LSM exec path is tested on a
# host whose own kernel cannot load BPF-LSM programs (shared/KERNEL-NOTES.md).
#
#   scripts/lsm-vm.sh [COMMAND...]     default: the exec and device end-to-end tests
#
# Prints the VM's console; exits with the command's exit status. Needs root and
# the Debian package registry (qemu-system-x86, busybox-static, kmod, the image).
set -euo pipefail

# The Debian 6.1 flavour whose headers the bootstrap already installed, if any.
installed=$(ls -d /usr/src/linux-headers-6.1.*-amd64 2>/dev/null | sort -V | tail -1)
KVER=${KVER:-${installed:+${installed#/usr/src/linux-headers-}}}
KVER=${KVER:-6.1.0-56-amd64}
WORK=${WORK:-/var/tmp/enforcer-lsm-vm}
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
MEM=${MEM:-4096}

say() { echo "lsm-vm: $*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }
if [ $# -eq 0 ]; then
    # (the map-capacity test writes 280,000 entries: minutes under emulation, and
    # nothing in it depends on the kernel's LSM)
    # (faulthandler: a test stuck for 5 minutes prints every thread's stack to the console)
    set -- .venv/bin/python -m pytest -q -p no:cacheprovider --require-bpf -o faulthandler_timeout=300 \
        -k "not full_exec_maps and (not test_restart or holds_across_a_restart)" \
        tests/e2e/test_exec.py tests/e2e/test_devices.py tests/e2e/test_layout.py tests/e2e/test_trainer.py \
        tests/e2e/test_restart.py tests/e2e/test_demo.py tests/e2e/test_clients.py tests/e2e/test_dns.py
fi

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
[ -d "/usr/src/linux-headers-$KVER" ] || need+=("linux-headers-$KVER")
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

mkdir -p "$WORK"
if [ ! -f "$WORK/root/boot/vmlinuz-$KVER" ]; then
    say "fetching linux-image-$KVER"
    (cd "$WORK" && apt-get download -q "linux-image-$KVER" 2>/dev/null && dpkg-deb -x linux-image-"$KVER"_*.deb root)
    depmod -b "$WORK/root" "$KVER"
fi

# The initramfs: busybox, the modules that reach the host filesystem, and init.
INITRD="$WORK/initrd"
rm -rf "$INITRD" && mkdir -p "$INITRD"/{bin,proc,sys,dev,host,upper,newroot,lib/modules/"$KVER"}
cp /bin/busybox "$INITRD/bin/busybox"
modules=$(grep -E "/(virtio_pci|virtio_pci_legacy_dev|virtio_pci_modern_dev|virtio|virtio_ring|9pnet|9pnet_virtio|9p|netfs|fscache|overlay)\.ko" \
    "$WORK/root/lib/modules/$KVER/modules.dep" | cut -d: -f1)
for module in $modules; do
    mkdir -p "$INITRD/lib/modules/$KVER/$(dirname "$module")"
    cp "$WORK/root/lib/modules/$KVER/$module" "$INITRD/lib/modules/$KVER/$module"
done
depmod -b "$INITRD" "$KVER" 2>/dev/null

printf '#!/bin/sh\ncd %q && exec %s\n' "$REPO" "$(printf '%q ' "$@")" > "$WORK/command.sh"
chmod +x "$WORK/command.sh"

cat > "$INITRD/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p overlay; do modprobe \$m; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host
mount -t tmpfs tmpfs /upper
mkdir -p /upper/up /upper/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/up,workdir=/upper/work /newroot
R=/newroot
mount -t proc proc \$R/proc
mount -t sysfs sys \$R/sys
mount -t devtmpfs dev \$R/dev
mkdir -p \$R/dev/pts && mount -t devpts devpts \$R/dev/pts
mount -t securityfs securityfs \$R/sys/kernel/security
mount -t bpf bpf \$R/sys/fs/bpf
mount -t tracefs tracefs \$R/sys/kernel/tracing
mount -t cgroup2 cgroup2 \$R/sys/fs/cgroup
mount -t tmpfs tmpfs \$R/run   # not /tmp: the checkout may be there (the overlay makes it writable)
mkdir -p \$R/lib/modules/$KVER
ln -sfn /usr/src/linux-headers-$KVER \$R/lib/modules/$KVER/build
ln -sfn /usr/src/linux-headers-${KVER%-amd64}-common \$R/lib/modules/$KVER/source
ln -sfn $WORK/root/lib/modules/$KVER/kernel \$R/lib/modules/$KVER/kernel
for f in \$R$WORK/root/lib/modules/$KVER/modules.*; do ln -sfn "\${f#\$R}" \$R/lib/modules/$KVER/; done
ip link set lo up
chroot \$R /sbin/modprobe -q veth  # the kernel's own module loader cannot see the chroot
echo "lsm-vm: kernel \$(uname -r), LSMs: \$(cat \$R/sys/kernel/security/lsm)"
chroot \$R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
    /bin/sh $WORK/command.sh
echo "ENFORCER_VM_EXIT=\$?"
poweroff -f
EOF
chmod +x "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.img"

say "booting $KVER under qemu (TCG; a few minutes)"
qemu-system-x86_64 -accel tcg -m "$MEM" -smp 2 -nographic -no-reboot \
    -kernel "$WORK/root/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.img" \
    -append "console=ttyS0 quiet lsm=lockdown,capability,landlock,bpf panic=-1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    | tee "$WORK/console.log"
status=$(grep -a -o 'ENFORCER_VM_EXIT=[0-9]*' "$WORK/console.log" | tail -1 | cut -d= -f2)
[ -n "$status" ] || { say "the VM did not report an exit status"; exit 1; }
exit "$status"
