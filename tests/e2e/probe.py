"""Run socket operations and print, as JSON, what each one returned.

Runs as a real process inside a test cgroup (and usually a test netns):
    echo '[{"op": "connect", "proto": "tcp", "addr": "10.231.0.5", "port": 443}]' | probe.py
Each result is "OK" or the errno name (EPERM means our hook refused it)."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import time


def _in_cgroup(path: str) -> bool:
    """Is this process in the cgroup at ``path`` (an absolute path below the cgroup2 mount)?"""
    with open("/proc/self/cgroup") as lines:
        own = next((line[3:].strip() for line in lines if line.startswith("0::")), "")
    return bool(own) and path.endswith(own)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def resolve(op: dict) -> str:
    """Addresses of a name, or what went wrong. "server" absent: the system's
    resolver (getaddrinfo, /etc/resolv.conf); else a dnspython query to that
    server (over TCP with "tcp"), which also checks the answer's source."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    name, qtype = op["name"], op.get("type", "A")
    if "server" not in op:
        family = socket.AF_INET6 if qtype == "AAAA" else socket.AF_INET
        try:
            infos = socket.getaddrinfo(name, 443, family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return f"gaierror:{exc.errno}"
        return ",".join(sorted({info[4][0] for info in infos}))
    query = dns.message.make_query(name, qtype)
    try:
        if op.get("tcp"):
            answer = dns.query.tcp(query, op["server"], timeout=op.get("timeout", 3), port=op.get("port", 53))
        else:
            answer = dns.query.udp(query, op["server"], timeout=op.get("timeout", 3), port=op.get("port", 53))
    except dns.exception.Timeout:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    if answer.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(answer.rcode())
    found = sorted(rdata.address for rrset in answer.answer for rdata in rrset if hasattr(rdata, "address"))
    return ",".join(found) if found else "NODATA"


def peer_of_connected_query(op: dict) -> str:
    """connect() a UDP socket to the resolver, ask, and report getpeername()
    and the answer's sender as recvfrom() saw them."""
    import dns.message

    family = _family(op["server"])
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((op["server"], 53))
        s.send(dns.message.make_query(op["name"], "A").to_wire())
        _, sender = s.recvfrom(4096)
        return f"{s.getpeername()[0]}:{s.getpeername()[1]} {sender[0]}:{sender[1]}"


def uring_socket(family: int, stype: int, protocol: int = 0) -> int:
    """socket() through io_uring (IORING_OP_SOCKET, Linux 5.19), by raw
    syscalls: one submission, one completion. Returns the new fd; raises
    OSError with the completion's errno."""
    import ctypes
    import mmap
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    sys_setup, sys_enter = 425, 426  # x86_64
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    ring_fd = libc.syscall(sys_setup, 4, params)
    if ring_fd < 0:
        raise OSError(ctypes.get_errno(), "io_uring_setup")
    try:
        sq_entries, cq_entries = struct.unpack_from("II", params, 0)
        _, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("7I", params, 40)  # io_sqring_offsets
        cq_head, cq_tail, cq_mask, _, _, cqes = struct.unpack_from("6I", params, 80)  # io_cqring_offsets
        sq = mmap.mmap(ring_fd, sq_array + sq_entries * 4, offset=0)
        cq = mmap.mmap(ring_fd, cqes + cq_entries * 16, offset=0x8000000)
        sqes = mmap.mmap(ring_fd, sq_entries * 64, offset=0x10000000)
        # opcode 45 IORING_OP_SOCKET: fd = domain, off = type, len = protocol
        sqes[0:64] = struct.pack("<BBHiQQIIQ", 45, 0, 0, family, stype, 0, protocol, 0, 7).ljust(64, b"\0")
        tail = struct.unpack_from("I", sq, sq_tail)[0]
        struct.pack_into("I", sq, sq_array + (tail & struct.unpack_from("I", sq, sq_mask)[0]) * 4, 0)
        struct.pack_into("I", sq, sq_tail, tail + 1)
        if libc.syscall(sys_enter, ring_fd, 1, 1, 1, None, 0) < 0:  # IORING_ENTER_GETEVENTS
            raise OSError(ctypes.get_errno(), "io_uring_enter")
        head = struct.unpack_from("I", cq, cq_head)[0]
        assert struct.unpack_from("I", cq, cq_tail)[0] != head
        _, res, _ = struct.unpack_from("<QiI", cq, cqes + (head & struct.unpack_from("I", cq, cq_mask)[0]) * 16)
        if res < 0:
            raise OSError(-res, os.strerror(-res))
        return res
    finally:
        os.close(ring_fd)


def run(op: dict) -> str:
    kind = op["op"]
    try:
        if kind == "resolve":
            # "retry_for": seconds to keep asking while the answer is an error (the
            # daemon is starting to listen in this namespace).
            deadline = time.monotonic() + op.get("retry_for", 0)
            while True:
                answer = resolve(op)
                if _is_address(answer.split(",")[0]) or time.monotonic() > deadline:
                    return answer
                time.sleep(0.1)
        if kind == "raw":
            # Bytes (hex) to a resolver over UDP; what comes back (hex), or "timeout".
            with socket.socket(_family(op["server"]), socket.SOCK_DGRAM) as s:
                s.settimeout(op.get("timeout", 1))
                s.sendto(bytes.fromhex(op["hex"]), (op["server"], 53))
                try:
                    return s.recv(4096).hex()
                except TimeoutError:
                    return "timeout"
        if kind == "peer":
            return peer_of_connected_query(op)
        if kind == "fetch":
            # Resolve with the system resolver, connect to the first address, read what the host says.
            infos = socket.getaddrinfo(op["name"], op["port"], socket.AF_INET, socket.SOCK_STREAM)
            with socket.create_connection(infos[0][4][:2], timeout=op.get("timeout", 3)) as s:
                return "OK:" + s.recv(100).decode()
        if kind == "touch":  # tell the test how far the ops got
            open(op["path"], "w").close()
            return "OK"
        if kind == "wait_file":
            while not os.path.exists(op["path"]):
                time.sleep(0.01)
            return "OK"
        if kind == "sleep":
            time.sleep(op["seconds"])
            return "OK"
        if kind == "socket":
            family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "packet": socket.AF_PACKET}[op["family"]]
            stype = {"raw": socket.SOCK_RAW, "dgram": socket.SOCK_DGRAM, "stream": socket.SOCK_STREAM}[op["type"]]
            socket.socket(family, stype, op.get("protocol", 0)).close()
            return "OK"
        if kind == "uring_socket":
            family = {"inet": socket.AF_INET, "packet": socket.AF_PACKET}[op["family"]]
            stype = {"raw": socket.SOCK_RAW, "dgram": socket.SOCK_DGRAM}[op["type"]]
            os.close(uring_socket(family, stype))
            return "OK"
        if kind == "sendto_once_moved":
            # Create the socket here, say so (op["ready"]), wait until something
            # outside moves this process to op["cgroup"], then use the socket.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                open(op["ready"], "w").close()
                deadline = time.monotonic() + 30
                while not _in_cgroup(op["cgroup"]):
                    if time.monotonic() > deadline:
                        return "not-moved"
                    time.sleep(0.01)
                s.sendto(b"probe", (op["addr"], op["port"]))
            return "OK"
        family = socket.AF_INET6 if op.get("socket_family") == "inet6" else _family(op["addr"])
        stype = socket.SOCK_STREAM if op["proto"] == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, stype) as s:
            s.settimeout(op.get("timeout", 2))
            if kind == "connect":
                s.connect((op["addr"], op["port"]))
                if op.get("send"):
                    s.sendall(op["send"].encode())
                    return "OK:" + s.recv(100).decode()
                if op.get("read"):
                    return "OK:" + s.recv(100).decode()
            elif kind == "sendto":
                s.sendto(b"probe", (op["addr"], op["port"]))
            else:
                return f"unknown op {kind}"
        return "OK"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def run_repeated(op: dict) -> str:
    """An op with "repeat": N runs N times; the result counts each outcome
    ("EPERM*60000"). With "until": a path, it runs until that file exists
    (at most N times), and "started": a path is created after the first run."""
    outcomes: dict[str, int] = {}
    for done in range(op.get("repeat", 1)):
        if done == 1 and op.get("started"):
            open(op["started"], "w").close()
        if op.get("until") and done % 64 == 0 and os.path.exists(op["until"]):
            break
        result = run(op)
        outcomes[result] = outcomes.get(result, 0) + 1
    return ",".join(f"{result}*{count}" for result, count in sorted(outcomes.items()))


def main() -> None:
    ops = json.loads(sys.stdin.read())
    if len(sys.argv) > 1:  # wait for the go file: the process exists before its policy is applied
        print("ready", flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
    print(json.dumps([run_repeated(op) if "repeat" in op else run(op) for op in ops]), flush=True)


if __name__ == "__main__":
    main()
