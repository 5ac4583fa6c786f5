"""A Python procedure that fails with one of its secrets in its exception,
for the grants tests: the request body names a key of wasi:config/store,
and the procedure parses that key's value as a number, as a procedure that
reads a numeric setting would. With a secret that is not a number, CPython
raises `ValueError: invalid literal for int() with base 10: 'VALUE'`, and the
host must not pass the value on to the caller or to its log.

Built against test-guests/configured/wit (Warren's handler plus
wasi:config/store) into target/guests/secret-py.wasm. Never install it in a
real modules folder.
"""

from wit_world import exports
from wit_world.imports import store


class Handler(exports.Handler):
    def handle(self, request: bytes) -> bytes:
        value = store.get(request.decode()) or ""
        return str(int(value)).encode()
