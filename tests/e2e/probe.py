"""Run socket operations and print, as JSON, what each one returned.

Runs as a real process inside a test cgroup (and usually a test netns):
    echo '[{"op": "connect", "proto": "tcp", "addr": "10.231.0.5", "port": 443}]' | probe.py
Each result is "OK" or the errno name (EPERM means our hook refused it)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def run(op: dict) -> str:
    kind = op["op"]
    try:
        if kind == "sleep":
            time.sleep(op["seconds"])
            return "OK"
        if kind == "socket":
            family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "packet": socket.AF_PACKET}[op["family"]]
            stype = {"raw": socket.SOCK_RAW, "dgram": socket.SOCK_DGRAM, "stream": socket.SOCK_STREAM}[op["type"]]
            socket.socket(family, stype, op.get("protocol", 0)).close()
            return "OK"
        if kind == "sendto_after_leaving":
            # Create the socket here, then move this process to another cgroup and use it.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                with open(op["cgroup"] + "/cgroup.procs", "w") as procs:
                    procs.write("0")
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
    print(json.dumps([run_repeated(op) if "repeat" in op else run(op) for op in ops]), flush=True)


if __name__ == "__main__":
    main()
