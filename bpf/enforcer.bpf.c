/* Everything Enforcer runs in the kernel, compiled once at daemon start-up.
 * The loader (enforcer/kernel/guard.py) passes the ENF_OFF_* offsets of
 * kernel-internal fields, taken from the running kernel's BTF, and
 * ENF_LSM when BPF-LSM is used (the exec mode "lsm"): refused execs and
 * packet sockets then fail with EPERM from LSM hooks instead of a SIGKILL. */
#include "common.bpf.h"
#include "dns.bpf.c"
#include "network.bpf.c"
#include "exec.bpf.c"
#include "device.bpf.c"
#include "syscall.bpf.c"
#include "escape.bpf.c"
