"""The `{{name}}` procedure: a Warren component (see README.md).

`handle` gets each request's body and returns the reply body; raising
`Err("why")` makes a `procedure-error` reply, any other exception a `trap`.
Each request runs in a fresh instance: nothing carries over between requests.
"""

from componentize_py_types import Err
from wit_world import exports


class Handler(exports.Handler):
    def handle(self, request: bytes) -> bytes:
        if not request:
            raise Err("empty request; send some bytes to echo")
        return request
