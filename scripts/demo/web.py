#!/usr/bin/python3
"""The demo's web service: answers on 127.0.0.1:8080 and talks sd_notify to mos (READY=1,
STATUS=, WATCHDOG=1), the way a daemon linked with libsystemd does."""
import http.server
import os
import socket
import threading
import time

def notify(message: str) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the mos demo\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("web: " + fmt % args, flush=True)

port = int(os.environ["PORT"])
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hello)
interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 2_000_000

def keep_alive():
    while interval:
        time.sleep(interval)
        notify("WATCHDOG=1")

threading.Thread(target=keep_alive, daemon=True).start()
print(f"web: listening on 127.0.0.1:{port}", flush=True)
notify(f"READY=1\nSTATUS=serving on 127.0.0.1:{port}")
server.serve_forever()
