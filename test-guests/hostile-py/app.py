"""A Python procedure that misbehaves on request, for the sandbox tests.

The request body picks the misdeed, as in the Rust hostile guest
(test-guests/hostile); `just build-test-guests` builds it into
target/guests/hostile-py.wasm. Never install it in a real modules folder.
"""

from componentize_py_types import Err
from wit_world import exports

COUNTER = 0


def spin():
    while True:
        pass


def memory_bomb():
    hoard = []
    while True:
        hoard.append(bytearray(1 << 20))


def read_file():
    try:
        with open("/etc/passwd", "rb") as f:
            return b"escaped the sandbox: read %d bytes" % len(f.read())
    except OSError as error:
        raise Err(f"read failed: {type(error).__name__}: {error}")


def open_socket():
    try:
        import socket

        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return b"escaped the sandbox: connected"
    except Exception as error:
        raise Err(f"connect failed: {type(error).__name__}: {error}")


def read_env():
    import os
    import sys

    return f"env={len(os.environ)} args={len(sys.argv)}".encode()


def counter():
    global COUNTER
    COUNTER += 1
    return str(COUNTER).encode()


def uncaught():
    raise ValueError("bad thing on purpose")


def return_text():
    return "text, not bytes"


MISDEEDS = {
    b"spin": spin,
    b"memory-bomb": memory_bomb,
    b"read-file": read_file,
    b"open-socket": open_socket,
    b"read-env": read_env,
    b"counter": counter,
    b"raise": uncaught,
    b"return-text": return_text,
}


class Handler(exports.Handler):
    def handle(self, request: bytes) -> bytes:
        misdeed = MISDEEDS.get(request)
        if misdeed is None:
            return b"echo:" + request
        return misdeed()
