"""An asyncio HTTP/1.1 reverse proxy built on lbalgo, meant to be copied into production.

    pip install lbalgo h11          # uvloop too, optionally: used when installed
    python examples/proxy.py --listen 127.0.0.1:8080 --algorithm swrr \\
        --backend 127.0.0.1:9001=5 --backend 127.0.0.1:9002=1 --backend 127.0.0.1:9003=1
    python examples/proxy.py --config backends.toml --health-check http:/healthz
    kill -HUP <pid>     # re-read --config (weight 0 drains a backend)
    kill -TERM <pid>    # stop: finish requests in flight, close kept-alive clients

The code lives in the ``lbproxy`` package beside this file (``framing``: HTTP/1.1 through
h11 plus the checks h11 leaves to its user; ``forward``: one client connection, retries,
relaying; ``server``: command line, reload, graceful stop). See docs/proxy.md.

What it does:

- one ``lbalgo`` pick per request, held as a lease for exactly as long as the request and
  its response are in flight, released on every path (the client or the backend leaving,
  timeouts, errors, a stop);
- HTTP/1.1 parsed by h11 on both sides and written out again from the checked parts, never
  copied raw; every request smuggling and response splitting shape refused (400 to a client,
  502 for a backend's malformed response) and that connection closed;
- retries on another backend (``lbalgo.attempts``'s rule) while that is safe; only the
  backend's own failures (refused, reset, timed out, malformed response) count against it in
  passive health, never a client's malformed request;
- every wait bounded (connect, each read and write, a whole request head, a whole request
  body, idle keep-alive), a bound on client connections, backpressure both ways;
- ``--config`` re-read on SIGHUP and applied with ``update()``; ``--health-check`` through
  ``lbalgo.health``; SIGTERM stops within ``--shutdown-timeout``;
- 502/503/504 bodies name no backend; the log lines next to them do.

Not included: TLS, HTTP/2, ``Upgrade``/WebSocket.
"""

from __future__ import annotations

import sys

from lbproxy.server import main

if __name__ == "__main__":
    sys.exit(main())
