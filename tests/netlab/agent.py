"""Servers the lab runs inside its namespaces, and the DNS wire format its probes use.

Stdlib only, so it runs under any interpreter as `agent.py serve SPEC` (a background
process killed at cleanup), `agent.py dnsbench SPEC` (timing client for the bench) or
`agent.py connect SPEC` (one connection from a process in a cgroup of its choosing).

Each DNS responder answers every A/AAAA question with its own fixed addresses, so a
probe can tell which resolver answered (CoreDNS, the in-tunnel one, an outside one).
Each TCP server sends one line naming itself, so a probe can tell which side of the
tunnel it reached.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

QTYPE_A = 1
QTYPE_AAAA = 28


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard recursive query for one name."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    return header + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _question_end(msg: bytes) -> int:
    pos = 12
    while msg[pos] != 0:
        pos += 1 + msg[pos]
    return pos + 1 + 4


def build_response(query: bytes, answers: dict[int, str]) -> bytes:
    """Answer `query` with the address for its qtype (or no answer for other types)."""
    qid, flags = struct.unpack("!HH", query[:4])
    end = _question_end(query)
    qtype = struct.unpack("!H", query[end - 4 : end - 2])[0]
    addr = answers.get(qtype)
    rdata = b""
    if addr is not None:
        family = socket.AF_INET if qtype == QTYPE_A else socket.AF_INET6
        rdata = socket.inet_pton(family, addr)
    ancount = 1 if rdata else 0
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, ancount, 0, 0)
    out = header + query[12:end]
    if rdata:
        out += struct.pack("!HHHIH", 0xC00C, qtype, 1, 30, len(rdata)) + rdata
    return out


def parse_answer(resp: bytes, qid: int) -> str:
    """The first A/AAAA address of a response to query `qid`; ValueError otherwise."""
    if len(resp) < 12:
        raise ValueError("short DNS response")
    rid, flags, _qd, ancount = struct.unpack("!HHHH", resp[:8])
    if rid != qid or not flags & 0x8000:
        raise ValueError(f"not a response to query {qid}")
    if ancount < 1:
        raise ValueError("DNS response without an answer")
    pos = _question_end(resp)
    _ptr, qtype, _cls, _ttl, rdlen = struct.unpack("!HHHIH", resp[pos : pos + 12])
    rdata = resp[pos + 12 : pos + 12 + rdlen]
    family = socket.AF_INET if qtype == QTYPE_A else socket.AF_INET6
    return socket.inet_ntop(family, rdata)


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return buf


def query_udp(server: str, port: int, msg: bytes, timeout: float) -> bytes:
    """Send one datagram on a connected socket: only the queried server's reply counts."""
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))
        sock.send(msg)
        return sock.recv(4096)


def query_tcp(server: str, port: int, msg: bytes, timeout: float) -> bytes:
    with socket.create_connection((server, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("!H", len(msg)) + msg)
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
        return recv_exact(sock, length)


# --- servers -------------------------------------------------------------------------


def _serve_dns_udp(sock: socket.socket, answers: dict[int, str]) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(build_response(data, answers), peer)
        except (IndexError, struct.error, OSError):
            continue


def _serve_dns_tcp_conn(conn: socket.socket, answers: dict[int, str]) -> None:
    with conn:
        conn.settimeout(5)
        try:
            while True:
                (length,) = struct.unpack("!H", recv_exact(conn, 2))
                resp = build_response(recv_exact(conn, length), answers)
                conn.sendall(struct.pack("!H", len(resp)) + resp)
        except (OSError, ConnectionError, struct.error, IndexError):
            return


def _serve_banner_conn(conn: socket.socket, ident: str) -> None:
    with conn:
        try:
            peer = conn.getpeername()[0]
            conn.sendall(f"{ident} {peer}\n".encode())
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(2)
            while conn.recv(4096):
                pass
        except OSError:
            return


def _accept_loop(sock: socket.socket, handler: Any, arg: Any) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn, arg), daemon=True).start()


def _listener(addr: str, port: int, kind: int) -> socket.socket:
    sock = socket.socket(_family(addr), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _family(addr) == socket.AF_INET6:
        # "::" serves both families; a specific address only its own.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    return sock


def serve(spec: dict[str, Any]) -> None:
    """Bind everything first, print `ready`, then serve until killed.

    spec: {"ident": str, "tcp": [[addr, port]...], "dns": [{"addrs": [addr...],
    "ports": [53...], "answers": {"A": ip, "AAAA": ip}}...]}.
    """
    ident = str(spec["ident"])
    threads: list[threading.Thread] = []
    for group in spec.get("dns", []):
        answers = {QTYPE_A: group["answers"]["A"], QTYPE_AAAA: group["answers"]["AAAA"]}
        for addr in group["addrs"]:
            for port in group.get("ports", [53]):
                udp = _listener(addr, int(port), socket.SOCK_DGRAM)
                tcp = _listener(addr, int(port), socket.SOCK_STREAM)
                threads.append(threading.Thread(target=_serve_dns_udp, args=(udp, answers)))
                threads.append(
                    threading.Thread(target=_accept_loop, args=(tcp, _serve_dns_tcp_conn, answers))
                )
    for addr, port in spec.get("tcp", []):
        tcp = _listener(addr, int(port), socket.SOCK_STREAM)
        threads.append(threading.Thread(target=_accept_loop, args=(tcp, _serve_banner_conn, ident)))
    for t in threads:
        t.daemon = True
        t.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def dnsbench(spec: dict[str, Any]) -> None:
    """Time `count` UDP queries (a fresh socket, so a fresh conntrack entry, for each).

    Prints a JSON list of round-trip times in microseconds; a lost query is -1.
    """
    server, port, count = str(spec["server"]), int(spec["port"]), int(spec["count"])
    qtype = QTYPE_AAAA if ":" in server else QTYPE_A
    rtts: list[float] = []
    for i in range(count):
        qid = (i * 7919 + 1) & 0xFFFF
        msg = build_query(qid, "bench.cluster.local", qtype)
        with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
            sock.settimeout(float(spec.get("timeout", 1.0)))
            sock.connect((server, port))
            start = time.perf_counter_ns()
            sock.send(msg)
            try:
                resp = sock.recv(4096)
            except OSError:
                rtts.append(-1.0)
                continue
            end = time.perf_counter_ns()
        parse_answer(resp, qid)
        rtts.append((end - start) / 1000.0)
    print(json.dumps(rtts), flush=True)


def connect(spec: dict[str, Any]) -> None:
    """Join the cgroup first (its `cgroup.procs`: a socket takes the cgroup's net_cls
    classid when it is created), then one TCP connection reading the server's banner.

    spec: {"cgroup_procs": path, "dst": addr, "port": int, "timeout": seconds}. Prints
    {"ok", "detail", "ident", "peer"} as JSON (probes.Outcome's fields)."""
    with open(spec["cgroup_procs"], "w") as procs:
        procs.write(f"{os.getpid()}\n")
    out: dict[str, Any] = {"ok": False, "detail": "", "ident": None, "peer": None}
    try:
        with socket.socket(_family(spec["dst"]), socket.SOCK_STREAM) as sock:
            sock.settimeout(float(spec["timeout"]))
            sock.connect((spec["dst"], int(spec["port"])))
            line = sock.makefile("r").readline().strip()
        ident, _, peer = line.partition(" ")
        out = {"ok": bool(line), "detail": f"banner {line!r}", "ident": ident, "peer": peer}
    except TimeoutError:
        out["detail"] = "timeout"
    except ConnectionRefusedError:
        out["detail"] = "refused"
    except OSError as exc:
        out["detail"] = exc.strerror or repr(exc)
    print(json.dumps(out), flush=True)


def main(argv: list[str]) -> int:
    modes = {"serve": serve, "dnsbench": dnsbench, "connect": connect}
    if len(argv) != 3 or argv[1] not in modes:
        print("usage: agent.py serve|dnsbench|connect JSON", file=sys.stderr)
        return 2
    modes[argv[1]](json.loads(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
