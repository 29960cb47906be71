"""Round-robin over the workers of a SO_REUSEPORT group (eBPF), or the kernel's hash.

The kernel hands each new connection of a port shared with SO_REUSEPORT to one socket of
the group by a hash of its addresses: over loopback or behind a balancer the source ports
look random, so one batch of 64 connections splits like coin tosses (a worker may hold 40
of them). A socket-filter program attached to the group (SO_ATTACH_REUSEPORT_EBPF) picks
the socket instead: its return value is the index of a socket in the group. Ours keeps a
counter in a one-entry array map, adds one atomically per connection (a SYN) and returns
the counter modulo the number of workers, so N connections land N/workers on each.

Indices. A socket joins the group at listen(2), at the end; a closed socket's place is
taken by the last one. The master listens one socket per worker, so the group holds
exactly `workers` sockets whenever every worker runs, whatever order a restart left them
in, and every index below `workers` is a live socket. While a worker is being replaced the
group is one short: the index that points past its end makes the kernel fall back to its
hash for that connection, which is also what happens when the map lookup fails.

Lifetime. The program belongs to the group: a worker that the master replaces joins it and
gets its share; a group made anew (every worker gone at once) gets a program anew. Each
group (each listener address and family) has its own program and counter: with one shared
counter a client alternating between two ports would always land on the same worker.

Failing safe. bpf(2) needs CAP_BPF (or root) and a kernel with atomic fetch-add in BPF
(5.12); under seccomp it may be refused outright. Any failure leaves the group to the
kernel's hash, as without this module, and the caller logs the reason once.
"""
from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
            "riscv64": 280, "i686": 357}
_BPF_MAP_CREATE = 0
_BPF_PROG_LOAD = 5
_BPF_MAP_TYPE_ARRAY = 2
_BPF_PROG_TYPE_SOCKET_FILTER = 1
_SO_ATTACH_REUSEPORT_EBPF = 52
_ATTR_SIZE = 128          # bigger than the fields we set; the kernel wants the rest zero


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(map_fd: int, workers: int) -> bytes:
    """The instructions: (fetch-add 1 on map[0]) % workers, or ~0 (the hash) on no entry."""
    return b"".join((
        _insn(0x62, dst=10, off=-4, imm=0),         # *(u32 *)(r10 - 4) = 0: the key
        _insn(0xbf, dst=2, src=10),                 # r2 = r10
        _insn(0x07, dst=2, imm=-4),                 # r2 += -4
        _insn(0x18, dst=1, src=1, imm=map_fd),      # r1 = the map (BPF_PSEUDO_MAP_FD)
        _insn(0x00),                                #   (upper half of the 64-bit load)
        _insn(0x85, imm=1),                         # r0 = bpf_map_lookup_elem(r1, r2)
        _insn(0x15, dst=0, off=5, imm=0),           # if r0 == 0 goto fallback
        _insn(0xb7, dst=1, imm=1),                  # r1 = 1
        _insn(0xdb, dst=0, src=1, imm=0x01),        # r1 = atomic_fetch_add(*(u64 *)r0, r1)
        _insn(0x97, dst=1, imm=workers),            # r1 %= workers
        _insn(0xbc, dst=0, src=1),                  # w0 = w1
        _insn(0x95),                                # return the index
        _insn(0xb4, dst=0, imm=-1),                 # fallback: w0 = 0xffffffff (too big:
        _insn(0x95),                                #   the kernel uses its hash)
    ))


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(0, f"bpf(2) is not known on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr,
                      ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _load(workers: int) -> int:
    """A loaded program (its fd) returning a round-robin index below workers."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIIII", attr, 0, _BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0)
    map_fd = _bpf(_BPF_MAP_CREATE, attr)
    try:
        code = ctypes.create_string_buffer(program(map_fd, workers))
        license_ = ctypes.create_string_buffer(b"MIT")
        log = ctypes.create_string_buffer(4096)
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_SOCKET_FILTER, len(code.raw) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_), 1, len(log),
                         ctypes.addressof(log))
        struct.pack_into("16s", attr, 48, b"fastproxy_rr")
        try:
            return _bpf(_BPF_PROG_LOAD, attr)
        except OSError as exc:
            detail = [line for line in log.value.decode("ascii", "replace").splitlines()
                      if line.strip() and not line.startswith("processed ")]
            if detail:   # the verifier's last word
                raise OSError(exc.errno, f"{exc.strerror} ({detail[-1].strip()})") from None
            raise
    finally:
        os.close(map_fd)     # the program holds the map now


def round_robin(socks: list[socket.socket], workers: int) -> None:
    """Attach a round-robin program to the SO_REUSEPORT group of each listening socket.

    socks: one listening socket per group (address family); each gets its own counter.
    Raises OSError (errno and reason) when bpf(2) or the attach is refused: the groups then
    keep the kernel's hash."""
    if os.environ.get("FASTPROXY_REUSEPORT_BPF") == "refuse":
        # For tests of the fallback where bpf(2) itself works (root on the test machine).
        raise OSError(1, "refused by FASTPROXY_REUSEPORT_BPF=refuse")
    for sock in socks:
        prog = _load(workers)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, prog)
        finally:
            os.close(prog)   # the group holds the program now
