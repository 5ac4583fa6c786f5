// The `fib` procedure in JavaScript: the seed's fib, as a Warren component.
//
// Built by `just build-guest-js` with componentize-js against wit/procedure.wit
// (world `procedure`); installed as modules/fib-js.wasm, so it answers as
// procedure `fib-js`. Same contract as the Rust guest: the body is a decimal
// integer 0..=93, the reply is fib(n) in decimal, and a bad body is an `err`
// (a `procedure-error` reply) saying what is wrong.
//
// How the contract maps: `handle` takes a Uint8Array and returns one (`ok`);
// throwing a string is the `err` case. Throwing anything else (an Error, a
// TypeError from a bug) is uncaught: the request ends with `trap`, whose
// message names the exception (scripts/build-guest-js builds this module
// inside the entry wrapper of client/templates/js/entry.js, which prints it).

const MAX_N = 93;

// The seed's rpc_server.py fib, line for line. JavaScript numbers are exact
// integers only up to 2^53, which fib(78) is the last to fit under, so above
// that the same recursion runs on BigInt (slower, and far past any timeout
// anyway, but never a wrong answer).
function fib(n) {
  if (n === 0) {
    return 0;
  } else if (n === 1) {
    return 1;
  } else {
    return fib(n - 1) + fib(n - 2);
  }
}

function fibBig(n) {
  if (n === 0n) {
    return 0n;
  } else if (n === 1n) {
    return 1n;
  } else {
    return fibBig(n - 1n) + fibBig(n - 2n);
  }
}

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

function parseRequest(body) {
  let text;
  try {
    text = decoder.decode(body).trim();
  } catch (error) {
    throw `request is not UTF-8 text (${error.message}); send a decimal integer like 30`;
  }
  if (text === "") {
    throw "request is empty; send a decimal integer like 30";
  }
  const digits = text.startsWith("+") ? text.slice(1) : text;
  if (/^-[0-9]+$/.test(digits)) {
    throw `${text} is negative; fib is defined here for 0..=${MAX_N}`;
  }
  if (!/^[0-9]+$/.test(digits)) {
    throw `${JSON.stringify(text.slice(0, 64))} is not a decimal integer; send digits only, like 30`;
  }
  const n = BigInt(digits);
  if (n > BigInt(MAX_N)) {
    throw `${text.slice(0, 64)} is above ${MAX_N}: fib(${MAX_N + 1}) does not fit in 64 bits`;
  }
  return Number(n);
}

export const handler = {
  handle(request) {
    const n = parseRequest(request);
    const result = n <= 78 ? fib(n) : fibBig(BigInt(n));
    return encoder.encode(String(result));
  },
};
