"""lbproxy: the example reverse proxy built on lbalgo (entry point: ``examples/proxy.py``).

Modules: ``framing`` (HTTP/1.1 through h11, plus the checks h11 leaves to its user),
``forward`` (one client connection: requests, retries, relaying), ``pool`` (kept-alive
backend connections), ``server`` (command line, listener, reload, health checks, graceful
stop).
"""
