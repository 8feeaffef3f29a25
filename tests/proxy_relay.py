"""A ProxyCommand for tests: sends a PROXY protocol header, then relays stdin/stdout.

Usage: python proxy_relay.py HOST PORT HEADER_HEX (write RELAY to a file first).
"""

RELAY = """\
import socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.sendall(bytes.fromhex(sys.argv[3]))
def upstream():
    while data := sys.stdin.buffer.read1(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""
