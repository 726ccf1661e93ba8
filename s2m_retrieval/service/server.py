"""Running the app with uvicorn: in the foreground (`s2m serve`) or on a background thread (tests, benchmark)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from s2m_retrieval.errors import BadInputError


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    """A non-loopback bind exposes the archive to the network: it needs a token, or an explicit --no-auth."""
    if token is not None and not token.strip():
        raise BadInputError("--token is empty: give a secret (e.g. from `openssl rand -hex 16`)")
    if token and no_auth:
        raise BadInputError("give --token or --no-auth, not both")
    if not is_loopback(host) and not token and not no_auth:
        raise BadInputError(f"--host {host} is reachable from other machines: give --token SECRET (or set "
                            "S2M_SERVE_TOKEN) so that clients must authenticate, or --no-auth to serve anyone")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port); a taken port is a one-line BadInputError."""
    if not 0 <= port <= 65535:
        raise BadInputError(f"--port must be between 0 and 65535, got {port}")
    try:
        return socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host
                                    else socket.AF_INET)
    except OSError as exc:
        raise BadInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                            "or --host") from None


def base_url(sock: socket.socket) -> str:
    """http://host:port of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on `sock` until interrupted (uvicorn handles SIGINT/SIGTERM with a graceful shutdown)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])


@contextmanager
def background_server(app, host: str = "127.0.0.1", log_level: str = "warning",
                      start_timeout_s: float = 20.0) -> Iterator[str]:
    """The app served on a free port of `host` by a thread; yields its base URL, stops it on exit."""
    import uvicorn

    sock = listen(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="s2m-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {base_url(sock)} did not start")
            time.sleep(0.02)
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
