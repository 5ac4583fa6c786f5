// A JavaScript procedure that misbehaves on request, for the sandbox tests.
//
// The request body picks the misdeed, as in the Rust hostile guest
// (test-guests/hostile); `just build-test-guests` builds it into
// target/guests/hostile-js.wasm. Never install it in a real modules folder.

let counter = 0;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const misdeeds = {
  spin() {
    for (;;) {}
  },
  "memory-bomb"() {
    const hoard = [];
    for (;;) {
      hoard.push(new Uint8Array(1 << 20).fill(1));
    }
  },
  // JavaScript in the component has no file API at all; say which of the
  // usual ones exist, so a test sees none does.
  "read-file"() {
    const apis = ["require", "process", "Deno", "Bun"].filter(
      (name) => typeof globalThis[name] !== "undefined",
    );
    if (apis.length > 0) {
      return encoder.encode(`escaped the sandbox: ${apis.join(", ")}`);
    }
    throw "read failed: no file API (require, process, Deno, Bun are all undefined)";
  },
  // fetch is JavaScript's only network API here. Built with componentize-js's
  // `http` feature disabled (the host offers no wasi:http), calling it aborts
  // the component: the request ends in a trap.
  "open-socket"() {
    if (typeof globalThis.fetch !== "function") {
      throw "connect failed: fetch is not defined";
    }
    let pending;
    try {
      pending = fetch("http://127.0.0.1:15672/");
    } catch (error) {
      throw `connect failed: ${String(error)}`;
    }
    return encoder.encode(`fetch returned ${String(pending)}`);
  },
  counter() {
    counter += 1;
    return encoder.encode(String(counter));
  },
  raise() {
    throw new TypeError("bad thing on purpose");
  },
  // A common mistake: text where bytes belong.
  "return-text"() {
    return "text, not bytes";
  },
};

export const handler = {
  handle(request) {
    const text = decoder.decode(request);
    const misdeed = misdeeds[text];
    if (misdeed === undefined) {
      return encoder.encode(`echo:${text}`);
    }
    return misdeed();
  },
};
