"""Runs inside a sandbox (standard library only): makes one system call by
number with the given integer arguments and prints what it returned, as JSON.

    syscall_probe.py NAME [ARG...]     NAME: unshare, mkdir, bpf, perf_event_open, getpid, ...
    syscall_probe.py perf-sw               perf_event_open of a software counter on itself
    syscall_probe.py unshare-mount-tmpfs DIR
                                       in a mount namespace of its own, make its mounts private,
                                       then mount a tmpfs on DIR (the first mount call is judged)
    syscall_probe.py int80 NR [ARG...] the i386 syscall NR through int 0x80 (up to three
                                       integer arguments): what a 32-bit program calls
    syscall_probe.py peek-parent       process_vm_readv of 8 bytes at an unmapped address of the
                                       parent: EFAULT if allowed (it got past the ptrace check)
    syscall_probe.py finit-module-self finit_module of this script: ENOEXEC if allowed (no module)
    syscall_probe.py init-module-zeros init_module of 64 zero bytes: ENOEXEC if allowed
    syscall_probe.py socketpair-unix   socketpair(AF_UNIX, SOCK_STREAM) into a real array
    syscall_probe.py detach-pinned PIN CGROUP TYPE
                                       what root would do to lift a cgroup program: BPF_OBJ_GET
                                       its pin, then BPF_PROG_DETACH it from CGROUP (prints the
                                       first call that failed)

Prints {"returned": R, "errno": E}; a process killed at the call prints nothing
(its exit status says SIGKILL).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

NUMBERS = {"getpid": 39, "unshare": 272, "mkdir": 83, "bpf": 321, "perf_event_open": 298, "ptrace": 101,
           "mount": 165, "keyctl": 250, "io_uring_setup": 425, "getppid": 110, "socket": 41, "socketpair": 53,
           "kexec_load": 246, "process_vm_readv": 310, "finit_module": 313, "init_module": 175}


CLONE_NEWNS = 0x00020000
PERF_TYPE_SOFTWARE, PERF_ATTR_SIZE_VER0 = 1, 64  # config 0: PERF_COUNT_SW_CPU_CLOCK
MS_REC, MS_PRIVATE = 0x4000, 0x40000


# long call(nr, a1, a2, a3): push rbx; eax=nr; ebx=a1; ecx=a2; edx=a3; int 0x80;
# sign-extend eax into rax; pop rbx; ret
INT80 = bytes.fromhex("53 89f8 89f3 4189c8 89d1 4489c2 cd80 4863c0 5b c3")
PROT_RWX, MAP_PRIVATE_ANON_32BIT = 7, 0x02 | 0x20 | 0x40


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def int80(libc: ctypes.CDLL, nr: int, args: list[int]) -> int:
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    page = libc.mmap(None, 4096, PROT_RWX, MAP_PRIVATE_ANON_32BIT, -1, 0)
    if page in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    ctypes.memmove(page, INT80, len(INT80))
    function = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long)(page)
    padded = [*args, 0, 0, 0][:3]
    returned = int(function(nr, *padded))
    return returned


BPF_OBJ_GET, BPF_PROG_DETACH = 7, 9


def detach_pinned(libc: ctypes.CDLL, pin: bytes, cgroup: bytes, attach_type: int) -> None:
    path = ctypes.create_string_buffer(pin)
    get_attr = (ctypes.c_uint64 * 2)(ctypes.addressof(path), 0)  # pathname; bpf_fd, file_flags
    prog_fd = libc.syscall(NUMBERS["bpf"], ctypes.c_long(BPF_OBJ_GET), get_attr, ctypes.c_long(16))
    if prog_fd < 0:
        print(json.dumps({"returned": prog_fd, "errno": ctypes.get_errno(), "step": "obj_get"}), flush=True)
        return
    cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    detach_attr = (ctypes.c_uint32 * 5)(cgroup_fd, prog_fd, attach_type, 0, 0)
    returned = libc.syscall(NUMBERS["bpf"], ctypes.c_long(BPF_PROG_DETACH), detach_attr, ctypes.c_long(20))
    print(json.dumps({"returned": returned, "errno": ctypes.get_errno() if returned < 0 else 0, "step": "detach"}),
          flush=True)


def main() -> None:
    name, args = sys.argv[1], [int(a, 0) if not a.startswith("/") else a.encode() for a in sys.argv[2:]]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if name == "perf-sw":  # a valid software counter on itself: the call gets past copying its attr
        attr = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER0)
        ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_SOFTWARE
        ctypes.c_uint32.from_buffer(attr, 4).value = PERF_ATTR_SIZE_VER0
        name, args = "perf_event_open", [attr, 0, -1, -1, 0]
    if name == "unshare-mount-tmpfs":  # mounts in a namespace that ends with this process
        if libc.syscall(NUMBERS["unshare"], CLONE_NEWNS) < 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        returned = libc.syscall(NUMBERS["mount"], None, b"/", None, MS_REC | MS_PRIVATE, None)
        if returned < 0:
            print(json.dumps({"returned": returned, "errno": ctypes.get_errno()}), flush=True)
            return
        name, args = "mount", [b"none", args[0], b"tmpfs", 0, None]
    if name == "detach-pinned":
        detach_pinned(libc, args[0], args[1], int(args[2]))
        return
    if name == "int80":  # the kernel returns -errno in eax
        returned = int80(libc, int(args[0]), [int(a) for a in args[1:]])
        print(json.dumps({"returned": -1 if returned < 0 else returned, "errno": -returned if returned < 0 else 0}),
              flush=True)
        return
    if name == "peek-parent":
        buffer = ctypes.create_string_buffer(8)
        local, remote = IoVec(ctypes.addressof(buffer), 8), IoVec(0x1000, 8)
        name, args = "process_vm_readv", [os.getppid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0]
    if name == "finit-module-self":
        name, args = "finit_module", [os.open(__file__, os.O_RDONLY), b"", 0]
    if name == "socketpair-unix":  # the kernel writes the descriptors' slots before making the sockets
        name, args = "socketpair", [1, 1, 0, (ctypes.c_int * 2)()]
    if name == "init-module-zeros":
        name, args = "init_module", [ctypes.create_string_buffer(64), 64, b""]
    # Variadic: every integer passed as a full register, as the kernel reads it.
    returned = libc.syscall(NUMBERS[name], *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    print(json.dumps({"returned": returned, "errno": ctypes.get_errno() if returned < 0 else 0}), flush=True)


if __name__ == "__main__":
    main()
