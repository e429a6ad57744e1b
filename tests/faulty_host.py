"""A one-host fake web on 127.0.0.1 whose robots.txt and pages fail in chosen ways."""

from __future__ import annotations

import http.server
import socket
import threading

ROBOTS = ("allow", "disallow", "404", "503", "drop", "hang")
PAGES = ("ok", "hang", "stall")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaultyHost:
    """Serves ``/robots.txt`` and every other path the chosen way; logs the paths asked for.

    robots: ``allow`` / ``disallow`` (200 with ``Allow: /`` or ``Disallow: /``), ``404``, ``503``,
    ``drop`` (close the connection without answering) or ``hang`` (never answer).
    page: ``ok`` (200 with ``body``), ``hang`` (never answer) or ``stall`` (headers and the start
    of the body, then nothing).
    """

    def __init__(self, robots: str = "allow", page: str = "ok", body: bytes = b"poster") -> None:
        if robots not in ROBOTS or page not in PAGES:
            raise ValueError(f"robots must be one of {ROBOTS} and page one of {PAGES}")
        self.robots = robots
        self.page = page
        self.body = body
        self.paths: list[str] = []
        self._release = threading.Event()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
                host.paths.append(self.path)
                mode = host.robots if self.path == "/robots.txt" else host.page
                if mode == "drop":
                    self.close_connection = True
                    return
                if mode == "hang":
                    host._release.wait()
                    return
                if mode in ("404", "503"):
                    self.send_error(int(mode))
                    return
                if mode in ("allow", "disallow"):
                    rule = "Allow: /" if mode == "allow" else "Disallow: /"
                    self._send(f"User-agent: *\n{rule}\n".encode())
                    return
                self._send(host.body, stall=mode == "stall")

            def _send(self, data: bytes, stall: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if stall:
                    self.wfile.write(data[:1])
                    self.wfile.flush()
                    host._release.wait()
                    return
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        """The URL of ``path`` on this host."""
        return f"http://{self.host}{path}"

    def __enter__(self) -> FaultyHost:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Release the hanging requests and stop listening (the port then refuses connections)."""
        self._release.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
