# A TCP echo server for the proxy tests (many connections at once, one thread): tcp_echo.py ADDRESS PORT
#
# Not `socat TCP-LISTEN:...,fork PIPE`: that one echoes through a pipe it both writes and
# reads, with blocking writes of up to 8 KiB. When its socket's send buffer fills (the client
# is slow to take the echo), the pipe fills too; poll then reports the pipe writable with less
# room than the next block, the write blocks for good, and socat, the pipe's only reader,
# stops: the transfer stalls. This server only ever waits on the socket.
import asyncio
import sys


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def main():
    server = await asyncio.start_server(echo, sys.argv[1], int(sys.argv[2]), backlog=2048)
    await server.serve_forever()


asyncio.run(main())
