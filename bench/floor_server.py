"""Reference (a), the HTTP floor: a bare aiohttp handler returning a small JSON, served exactly
as walletd serves (aiohttp web.run_app, uvloop when installed, no access log), so the ratio
walletd ÷ floor isolates what walletd does beyond HTTP.

    python -m bench.floor_server --host 127.0.0.1 --port P
"""

from __future__ import annotations

import argparse

from aiohttp import web

from tests.support.servers import new_event_loop


async def handler(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
