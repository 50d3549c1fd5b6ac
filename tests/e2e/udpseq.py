#!/usr/bin/env python3
"""Numbered UDP datagrams through a tunnel, to see whether any arrives twice.

  udpseq.py recv BIND_IP PORT OUTFILE   writes each sequence number received, one a line, until
                                        an end marker arrives (or 60 s pass); exits 0
  udpseq.py send DST_IP PORT COUNT      sends COUNT datagrams "seq N" (N = 0..COUNT-1), one
                                        every millisecond, then 20 end markers 10 ms apart

A datagram is 200 bytes (the number, padded), so each is one transport message. The receiver
only records; the test decides what counts as a failure (a number seen twice).
"""
import socket
import sys
import time

SIZE = 200
END = b"end".ljust(SIZE, b".")


def family(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def recv(ip, port, out):
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    s.bind((ip, port))
    s.settimeout(1.0)
    deadline = time.monotonic() + 60
    with open(out, "w") as f:
        while time.monotonic() < deadline:
            try:
                d = s.recv(65535)
            except socket.timeout:
                continue
            if d == END:
                break
            if d.startswith(b"seq "):
                f.write(d[4:].split(b".")[0].decode() + "\n")
                f.flush()


def send(ip, port, count):
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    start = time.monotonic()
    for i in range(count):
        s.sendto(f"seq {i}".encode().ljust(SIZE, b"."), (ip, port))
        # One per millisecond on average, without drifting.
        lag = start + (i + 1) / 1000 - time.monotonic()
        if lag > 0:
            time.sleep(lag)
    time.sleep(0.02)
    for _ in range(20):
        s.sendto(END, (ip, port))
        time.sleep(0.01)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
