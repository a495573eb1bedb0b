"""A throwaway MNIST mirror on 127.0.0.1 for the download tests.

Each file can be served normally, answered with 404, cut off halfway, or replaced by other bytes,
so the loader's handling of real network failures is exercised without touching the internet.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

OK = "ok"
NOT_FOUND = "404"
CUT = "cut"  # announce the full Content-Length, send half, close the connection
CUT_NO_LENGTH = "cut-no-length"  # no Content-Length at all, send half, close


class MirrorServer:
    """Serve ``files`` (name -> bytes) under ``url``; ``behaviour`` maps a name (or ``"*"``) to
    ``OK``, ``NOT_FOUND``, ``CUT``, ``CUT_NO_LENGTH`` or replacement ``bytes``.

    Use as a context manager; on exit the server and its single serving thread are stopped and
    joined. ``requests`` records the file names asked for, in order.
    """

    def __init__(self, files, behaviour=None):
        self.files = dict(files)
        self.behaviour = dict(behaviour or {})
        self.requests = []
        self._server = None
        self._thread = None

    def _how(self, name):
        return self.behaviour.get(name, self.behaviour.get("*", OK))

    def __enter__(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - name fixed by http.server
                name = self.path.rsplit("/", 1)[-1]
                mirror.requests.append(name)
                how = mirror._how(name)
                body = mirror.files.get(name)
                if how == NOT_FOUND or body is None:
                    self.send_error(404)
                    return
                if isinstance(how, bytes):
                    body, how = how, OK
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if how != CUT_NO_LENGTH:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if how in (CUT, CUT_NO_LENGTH):
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass  # keep pytest output clean

        # A plain (single-threaded) HTTPServer: the loader downloads one file at a time, and one
        # serving thread is easy to stop and join, so no thread outlives the test.
        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/mnist/"

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "mirror server thread did not stop"
