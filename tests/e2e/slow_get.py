# A paced HTTP download through an HTTP proxy, for checks that need a transfer still running
# while something else happens: slow_get.py PROXY_PORT URL OUT BYTES_PER_SECOND [USER:PASS]
# Reads a little every 50 ms, never ahead of BYTES_PER_SECOND since the start, so it cannot
# finish early whatever the buffers in between hold, and never pauses long (curl's
# --limit-rate reads a burst and then sleeps for seconds, which a proxy with a short idle
# timeout rightly takes for an idle client). Writes the body to OUT; exits 0 only if the
# status was 200 and the whole Content-Length arrived.
import base64, socket, sys, time

port, url, out, rate = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
host = url.split("/")[2]
head = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
if len(sys.argv) > 5:
    head += "Proxy-Authorization: Basic " + base64.b64encode(sys.argv[5].encode()).decode() + "\r\n"
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall((head + "\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("connection closed in the response head")
    buf += chunk
header, body = buf.split(b"\r\n\r\n", 1)
lines = header.decode(errors="replace").split("\r\n")
if lines[0].split(" ")[1:2] != ["200"]:
    sys.exit(f"status: {lines[0]}")
length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
step = max(1, rate // 20)
start = time.monotonic()
with open(out, "wb") as f:
    f.write(body)
    got = len(body)
    while got < length:
        ahead = got / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        chunk = s.recv(min(step, length - got))
        if not chunk:
            break
        f.write(chunk)
        got += len(chunk)
if got != length:
    sys.exit(f"{got} of {length} bytes")
