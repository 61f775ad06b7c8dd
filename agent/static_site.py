"""The server WebOps runs for a `static` deployment: the standard library's file server,
without a log line per request.

`python3 -m http.server` writes one line per request to stderr, so every health check
the agent makes (one every few seconds) became a runtime log item of the deployment;
requests are logged by the nginx in front. One line at start says what is served.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from typing import Any


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.static_site")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--directory", required=True)
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    handler = functools.partial(QuietHandler, directory=args.directory)
    with http.server.ThreadingHTTPServer((args.bind, args.port), handler) as server:
        print(f"serving {args.directory} on {args.bind}:{args.port}", file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
