"""The `{{name}}` procedure: a Warren component that uses what its manifest
(`{{name}}.toml`) grants (see README.md).

- A body that is a URL (`http://…`, `https://…`) is fetched with an outbound
  HTTP GET (wasi:http), and the reply is the response body. The host lets
  it through only to what `[http] allow` lists; anything else fails with
  `HttpRequestDenied`.
- Any other body is answered `GREETING, BODY`, with `greeting` read from
  `[config]` through `wasi:config/store`.

Raising `Err("why")` makes a `procedure-error` reply, any other exception a
`trap`. Each request runs in a fresh instance: nothing carries over between
requests.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import outgoing_handler, store, streams, types


def get(url: str) -> bytes:
    """GETs `url` and returns its body; a status of 400 or more is an error."""
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    request = types.OutgoingRequest(types.Fields())
    request.set_scheme(types.Scheme_Https() if scheme == "https" else types.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query("/" + path)
    try:
        # Where the manifest does not allow it, this is the error
        # (HttpRequestDenied, DestinationIpProhibited, …).
        future = outgoing_handler.handle(request, None)
    except Err as error:
        raise Err(f"GET {url}: {error.value}")
    with future, future.subscribe() as ready:
        ready.block()
        outcome = future.get().value
    if isinstance(outcome, Err):
        raise Err(f"GET {url}: {outcome.value}")
    with outcome.value as response:
        status = response.status()
        body = bytearray()
        with response.consume() as incoming:
            with incoming.stream() as stream:
                while True:
                    try:
                        body += stream.blocking_read(65536)
                    except Err as error:
                        if isinstance(error.value, streams.StreamError_Closed):
                            break
                        raise Err(f"GET {url}: {error.value}")
    if status >= 400:
        raise Err(f"GET {url}: status {status}")
    return bytes(body)


class Handler(exports.Handler):
    def handle(self, request: bytes) -> bytes:
        if not request:
            raise Err("empty request; send a name, or a URL to fetch")
        text = request.decode()
        if text.startswith(("http://", "https://")):
            return get(text)
        greeting = store.get("greeting") or "hello"
        return f"{greeting}, {text}".encode()
