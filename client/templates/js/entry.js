// The module componentize-js builds: app.js's handler, unchanged, plus what
// the bindings do not do: say why a call failed. When `handle` throws
// something that is not the `err` case (a string, or an object with a
// `payload`), or returns something that is not bytes (a string, a number),
// or its promise rejects, the component aborts with nothing useful on
// stderr; this prints the reason first ("Uncaught TypeError: ..."), which
// the host quotes in the `trap` reply. Build with `npm run build`; write
// the procedure in app.js.
import { handler as app } from "./app.js";

// Prints an uncaught exception (not the `err` case) and throws it on.
function report(error) {
  const isErr =
    typeof error === "string" ||
    (error !== null && typeof error === "object" && Object.hasOwn(error, "payload"));
  if (!isErr) {
    console.error(`Uncaught ${String(error)}`);
  }
  throw error;
}

// Bytes pass; a string, number or boolean would abort the component.
function bytes(result) {
  if (["string", "number", "boolean", "bigint", "symbol"].includes(typeof result)) {
    report(
      new TypeError(
        `handle returned a ${typeof result}, not bytes: return a Uint8Array ` +
          "(new TextEncoder().encode(text) for text)",
      ),
    );
  }
  return result;
}

export const handler = {
  handle(request) {
    let result;
    try {
      result = app.handle(request);
    } catch (error) {
      report(error);
    }
    if (result !== null && typeof result === "object" && typeof result.then === "function") {
      return result.then(bytes, report);
    }
    return bytes(result);
  },
};
