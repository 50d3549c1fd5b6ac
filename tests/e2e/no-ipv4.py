#!/usr/bin/env python3
"""Runs a command on a host without IPv4, as far as the command can tell: socket(AF_INET, ...)
fails with EAFNOSUPPORT, which is what systemd's RestrictAddressFamilies=AF_INET6 AF_UNIX ...
does to a service (with the same kind of seccomp filter) and what a kernel without the family
answers. Everything else, IPv6 and Unix sockets included, works as usual.

Usage: no-ipv4.py COMMAND [ARGS...]   (the filter stays for the command and its children)

Linux cannot be built without IPv4, and a network namespace always has it, so this is the
realistic way to take IPv4 away from one process.
"""
import ctypes
import errno
import os
import platform
import socket
import struct
import sys

# Audit architecture and socket(2) number of the machines we run on.
ARCHES = {
    "x86_64": (0xC000003E, 41),
    "aarch64": (0xC00000B7, 198),
}

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: no-ipv4.py COMMAND [ARGS...]")
    machine = platform.machine()
    if machine not in ARCHES:
        sys.exit(f"no-ipv4.py: unknown machine {machine}: add its audit arch and socket number")
    arch, nr_socket = ARCHES[machine]
    program = b"".join([
        insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        insn(BPF_JEQ_K, 1, 0, arch),            # our arch: go on; another: allow
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
        insn(BPF_JEQ_K, 0, 3, nr_socket),       # socket(2)?
        insn(BPF_LD_W_ABS, 0, 0, OFF_ARG0),     # its domain (low 32 bits)
        insn(BPF_JEQ_K, 0, 1, socket.AF_INET),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])
    count = len(program) // 8
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(count, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"no-ipv4.py: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        sys.exit(f"no-ipv4.py: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
    # The filter works before we hand over: an IPv4 socket is refused, an IPv6 one is not.
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        sys.exit("no-ipv4.py: the filter did not refuse an IPv4 socket")
    except OSError as e:
        if e.errno != errno.EAFNOSUPPORT:
            raise
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
