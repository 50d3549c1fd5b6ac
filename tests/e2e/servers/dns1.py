# The proxy tests' DNS server: dns1.py ADDRESS NAME IPV4
# Answers A queries for one name; AAAA for it is empty, every other name is NXDOMAIN.
import socket, sys
addr, name, answer = sys.argv[1], sys.argv[2].lower(), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
while True:
    q, client = s.recvfrom(512)
    try:
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype = int.from_bytes(q[i + 1:i + 3], "big")
        question = q[12:i + 5]
    except Exception:
        continue
    qname = ".".join(labels)
    if qname == name and qtype == 1:
        flags, answers = b"\x81\x80", b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + answer
    elif qname == name:
        flags, answers = b"\x81\x80", b""
    else:
        flags, answers = b"\x81\x83", b""
    count = (1 if answers else 0).to_bytes(2, "big")
    s.sendto(q[:2] + flags + b"\x00\x01" + count + b"\x00\x00\x00\x00" + question + answers, client)
