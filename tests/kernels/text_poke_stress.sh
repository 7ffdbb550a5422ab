#!/bin/sh
# The minimal reproducer of issue 14's hang, with no BPF and nothing of ours:
# ftrace patches the entry of security_socket_create on and off (text_poke_bp,
# the int3 protocol a BPF trampoline uses too) while two processes call
# socket() in a loop. Run it in the VM:
#
#   ACCEL=tcg tests/kernels/vm.sh tests/kernels/text_poke_stress.sh 300
#
# Under qemu 7.2's multi-threaded TCG (ACCEL=tcg) both vCPUs soon spin at
# security_socket_create+0x0 until the soft-lockup panic (seen after 64 s);
# with vm.sh's default (tcg,thread=single) it runs to the end. Prints a line
# every 50 rounds; exits 0 when the time is up.
set -eu
seconds=${1:-300}
callers=""
for _ in 1 2; do
    /usr/bin/python3 -c 'import socket
while True: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()' &
    callers="$callers $!"
done
cd /sys/kernel/tracing
echo security_socket_create > set_ftrace_filter
end=$(( $(date +%s) + seconds ))
rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
    echo function > current_tracer
    echo nop > current_tracer
    rounds=$((rounds + 1))
    [ $((rounds % 50)) -ne 0 ] || echo "text_poke_stress: $rounds rounds"
done
: > set_ftrace_filter
# shellcheck disable=SC2086
kill $callers
echo "text_poke_stress: done, $rounds rounds in $seconds s"
