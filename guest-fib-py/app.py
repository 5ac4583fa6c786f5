"""The `fib` procedure in Python: the seed's own fib, as a Warren component.

Built by `just build-guest-py` with componentize-py against wit/procedure.wit
(world `procedure`); installed as modules/fib-py.wasm, so it answers as
procedure `fib-py`. Same contract as the Rust guest: the body is a decimal
integer 0..=93, the reply is fib(n) in decimal, and a bad body is an `err`
(a `procedure-error` reply) saying what is wrong.
"""

from componentize_py_types import Err
from wit_world import exports

MAX_N = 93


# The seed's rpc_server.py fib, word for word.
def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def parse_request(body: bytes) -> int:
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise Err(f"request is not UTF-8 text ({error}); send a decimal integer like 30")
    if not text:
        raise Err("request is empty; send a decimal integer like 30")
    digits = text[1:] if text.startswith("+") else text
    if digits.startswith("-") and digits[1:].isascii() and digits[1:].isdigit():
        raise Err(f"{text} is negative; fib is defined here for 0..={MAX_N}")
    if not (digits.isascii() and digits.isdigit()):
        raise Err(f"{text[:64]!r} is not a decimal integer; send digits only, like 30")
    n = int(digits)
    if n > MAX_N:
        raise Err(f"{text[:64]} is above {MAX_N}: fib({MAX_N + 1}) does not fit in 64 bits")
    return n


class Handler(exports.Handler):
    def handle(self, request: bytes) -> bytes:
        return str(fib(parse_request(request))).encode()
