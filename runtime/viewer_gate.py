"""The live viewer's connections: what a client may cost before and after it has proved who it is.

- Before authentication a connection only waits for its request: the request line and headers
  must arrive within ``head_deadline_s`` in total (however slowly the bytes trickle in), and at
  most ``pending`` such connections wait at once; a new one beyond that closes the one waiting
  longest, so clients that never finish their request cannot keep a valid one out (a valid
  request arrives in milliseconds).
- After authentication, short answers (the page, ``/status.json``) are sent at once; a stream
  (``/stream.mjpg``) takes one of ``streams`` slots for its lifetime (more get 503). A client
  that stops reading for ``write_timeout_s`` is closed.
- A client that hangs up or stalls ends its connection quietly: nothing is written to stderr, and
  any other failure in a request is one line, never a traceback.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_HEAD_BYTES = 16384  # request line and headers; a longer head is refused (the page's requests need < 1 KiB)


@dataclass(frozen=True)
class ViewerLimits:
    """streams: MJPEG streams served at once; write_timeout_s: a stalled reader is closed after this;
    head_deadline_s: the whole request head must arrive within this; pending: connections that
    may wait for their request head at once."""

    streams: int = 32
    write_timeout_s: float = 15.0
    head_deadline_s: float = 5.0
    pending: int = 128


def read_head(sock: socket.socket, deadline_s: float) -> bytes | None:
    """The request line and headers (through the blank line) read from ``sock`` within
    ``deadline_s`` seconds in total; None when the client closes, is too slow or sends too much."""
    end = time.monotonic() + deadline_s
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        left = end - time.monotonic()
        if left <= 0 or len(head) > MAX_HEAD_BYTES:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except OSError:  # the deadline passed, the client reset, or the gate closed it
            return None
        if not chunk:
            return None
        head += chunk
    return head


class GatedServer(ThreadingHTTPServer):
    """A threading HTTP server whose handlers read their request head through ``wait_for_head``."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: a burst of clients is accepted, not left in SYN retries

    def __init__(self, address: tuple[str, int], handler, limits: ViewerLimits):
        self.limits = limits
        self.stream_slots = threading.BoundedSemaphore(limits.streams)
        self._lock = threading.Lock()
        self._waiting: OrderedDict[socket.socket, None] = OrderedDict()  # oldest first
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._lock:
            self._waiting[request] = None
            while len(self._waiting) > self.limits.pending:
                oldest, _ = self._waiting.popitem(last=False)
                try:
                    oldest.shutdown(socket.SHUT_RDWR)  # its handler's recv returns at once
                except OSError:
                    pass
        super().process_request(request, client_address)

    def wait_for_head(self, sock: socket.socket) -> bytes | None:
        """The request head of ``sock`` (see ``read_head``); the connection stops counting as waiting."""
        try:
            return read_head(sock, self.limits.head_deadline_s)
        finally:
            with self._lock:
                self._waiting.pop(sock, None)

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # the client hung up, reset or stopped reading: nothing to report
            return
        sys.stderr.write(f"viewer: a request from {client_address[0]} failed: {type(err).__name__}: {err}\n")


class GatedHandler(BaseHTTPRequestHandler):
    """The request handler of a ``GatedServer``: the whole head read within the gate's deadline,
    then one request per connection (HTTP/1.0: nothing follows the head and its body bytes), and
    no log lines of its own (the servers report through theirs). ``received``/``received_wall``:
    when the head was complete (monotonic and wall seconds). Subclasses set ``timeout``."""

    server: GatedServer

    def log_message(self, format, *args):
        pass

    def handle(self):
        head = self.server.wait_for_head(self.connection)
        if head is None:
            return
        self.received, self.received_wall = time.monotonic(), time.time()
        self.connection.settimeout(self.timeout)
        self.rfile = io.BytesIO(head)
        self.handle_one_request()
