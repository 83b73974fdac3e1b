#!/usr/bin/env python3
"""Closed-loop loopback churn: N short connections (request, response, close), W workers.
Prints connections per second. Used by bpf_cost.sh to drive the sock_ops program.
CHURN_PORT fixes the server's port and CHURN_CONNECT (address:port) is where clients connect:
bpf_cost.sh's NAT arm DNATs the one to the other."""
import os
import socket
import sys
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
WORKERS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
REQUEST, RESPONSE = b"q" * 64, b"r" * 256

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(os.environ.get("CHURN_PORT", "0"))))
srv.listen(1024)
port = srv.getsockname()[1]
host, _, to_port = os.environ.get("CHURN_CONNECT", f"127.0.0.1:{port}").rpartition(":")
target = (host, int(to_port))


def serve():
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            return
        c.recv(4096)
        c.sendall(RESPONSE)
        c.close()


for _ in range(2):
    threading.Thread(target=serve, daemon=True).start()


def work(count):
    for _ in range(count):
        c = socket.create_connection(target)
        c.sendall(REQUEST)
        while c.recv(4096):
            pass
        c.close()


start = time.monotonic()
threads = [threading.Thread(target=work, args=(N // WORKERS,)) for _ in range(WORKERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.monotonic() - start
print(f"{(N // WORKERS) * WORKERS} {elapsed:.3f} {(N // WORKERS) * WORKERS / elapsed:.0f}")
