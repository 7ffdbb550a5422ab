#!/bin/bash
# Run one command on a Debian distro kernel under qemu (TCG: no KVM is needed),
# with this machine's root filesystem underneath (read-only 9p, a tmpfs overlay
# on top), so the VM uses this checkout, its .venv, bcc and the exact
# linux-headers of the kernel it boots. Everything comes from the package
# registry (the kernel image, its headers, qemu, busybox) and is cached under
# $WORK, so a second run boots in seconds (shared/KERNEL-NOTES.md has the path).
#
#   tests/kernels/vm.sh COMMAND...
#
#   KVER=6.1.0-57-amd64     the kernel (default: the newest 6.1 the registry has)
#   LSM=default             its lsm= list; "default": none given, the kernel's own
#                           CONFIG_LSM (Debian 12's: landlock,lockdown,yama,integrity,
#                           apparmor,bpf: BPF-LSM is on as Debian ships it)
#   RESULTS=DIR             a host directory the command can write (the same
#                           path inside the VM); nothing else it writes survives
#   CONSOLE=FILE            where the console is kept too (default $WORK/console.log)
#   VM_TIMEOUT=SECONDS      the VM is killed after this long (default 3600)
#   KERNEL_ARGS=...         more kernel parameters
#   ACCEL=..., SMP=N        qemu's -accel and -smp (default tcg,thread=single and 2)
#
# The guest's lockup detectors end the run: a CPU stuck in the kernel for 40 s
# (soft lockup) or a task blocked for 5 minutes (hung task) panics the guest
# after printing every CPU's and every task's stack, so a hung kernel costs
# about a minute, not the CI's 90. (An RCU stall warning does not stop the
# guest; the kernel matrix still counts it as a failure.)
#
# Prints the VM's console; exits with the command's exit status, 1 if the VM
# never reported one (it panicked, it was killed at VM_TIMEOUT: the last lines
# say which). Needs root. tests/kernels/matrix.py runs the suite with it.
set -euo pipefail

say() { echo "vm: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }
[ $# -gt 0 ] || { say "usage: $0 COMMAND..."; exit 2; }

newest_61() {
    local installed
    installed=$(ls -d /usr/src/linux-headers-6.1.*-amd64 2>/dev/null | sort -V | tail -1)
    if [ -n "$installed" ]; then echo "${installed#/usr/src/linux-headers-}"; return; fi
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | cut -d' ' -f1 | sort -V | tail -1 \
        | sed 's/^linux-image-//'
}
KVER=${KVER:-$(newest_61)}
[ -n "$KVER" ] || { say "no linux-image-6.1.0-*-amd64 in this machine's package registry (Debian 12's has it;
    elsewhere run only this machine's kernel: ENFORCER_KERNELS=host make test)"; exit 1; }
LSM=${LSM:-default}
lsm_param=""
[ "$LSM" = default ] || lsm_param="lsm=$LSM"
WORK=${WORK:-/var/tmp/enforcer-vm/$KVER}
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
RESULTS=${RESULTS:-}
MEM=${MEM:-4096}
# Single-threaded TCG: both vCPUs take turns on one host thread. qemu 7.2's
# multi-threaded TCG livelocks the vCPUs that run a function while the kernel
# patches its entry (text_poke_bp: BPF trampolines, ftrace, static keys): soft
# lockup at the patch site, with or without BPF (text_poke_stress.sh). That
# hung this VM in the restart test (issue 14). ACCEL=tcg brings it back.
ACCEL=${ACCEL:-tcg,thread=single}
SMP=${SMP:-2}
CONSOLE=${CONSOLE:-$WORK/console.log}
VM_TIMEOUT=${VM_TIMEOUT:-3600}
# softlockup after 2 x watchdog_thresh; panic_print=1: every task's state and stack.
WATCHDOG_ARGS="watchdog_thresh=20 softlockup_panic=1 softlockup_all_cpu_backtrace=1 hung_task_panic=1 panic_print=1"

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
# Rebuilt each run (under a second): it carries the command.
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

results_share=()
mount_results=""
if [ -n "$RESULTS" ]; then
    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
    results_share=(-virtfs "local,path=$RESULTS,mount_tag=results,security_model=none")
    mount_results="mkdir -p \$R$RESULTS && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results \$R$RESULTS"
fi

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
echo 300 > /proc/sys/kernel/hung_task_timeout_secs
$mount_results
mkdir -p \$R/lib/modules/$KVER
ln -sfn /usr/src/linux-headers-$KVER \$R/lib/modules/$KVER/build
ln -sfn /usr/src/linux-headers-${KVER%-amd64}-common \$R/lib/modules/$KVER/source
ln -sfn $WORK/root/lib/modules/$KVER/kernel \$R/lib/modules/$KVER/kernel
for f in \$R$WORK/root/lib/modules/$KVER/modules.*; do ln -sfn "\${f#\$R}" \$R/lib/modules/$KVER/; done
ip link set lo up
chroot \$R /sbin/modprobe -q veth  # the kernel's own module loader cannot see the chroot
echo "vm: kernel \$(uname -r), LSMs: \$(cat \$R/sys/kernel/security/lsm)"
chroot \$R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
    /bin/sh $WORK/command.sh
echo "ENFORCER_VM_EXIT=\$?"
sync
poweroff -f
EOF
chmod +x "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.img"

say "booting $KVER (lsm=$LSM) under qemu ($ACCEL, $SMP vCPUs), at most ${VM_TIMEOUT} s"
mkdir -p "$(dirname "$CONSOLE")"
# panic=-1 + -no-reboot: a panicking guest ends qemu at once.
set +e
timeout -s KILL "$VM_TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -m "$MEM" -smp "$SMP" -nographic -no-reboot \
    -kernel "$WORK/root/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.img" \
    -append "console=ttyS0 quiet $lsm_param panic=-1 $WATCHDOG_ARGS ${KERNEL_ARGS:-}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    "${results_share[@]}" \
    | tee "$CONSOLE"
qemu_status=${PIPESTATUS[0]}
set -e
status=$(grep -a -o 'ENFORCER_VM_EXIT=[0-9]*' "$CONSOLE" | tail -1 | cut -d= -f2 || true)
if [ -z "$status" ]; then
    if [ "$qemu_status" = 137 ]; then
        say "the VM was killed after ${VM_TIMEOUT} s (VM_TIMEOUT) before its command ended"
    elif panic=$(grep -a -m1 'Kernel panic' "$CONSOLE"); then
        say "the guest kernel panicked: ${panic#*] }"
    else
        say "the VM ended (qemu exit $qemu_status) without reporting the command's exit status"
    fi
    exit 1
fi
exit "$status"
