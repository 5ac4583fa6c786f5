// The module componentize-js builds: app.js's handler, unchanged, plus one
// thing the bindings do not do. When `handle` throws something that is not
// the `err` case (a string, or an object with a `payload`), the component
// aborts with only "expected a string" on stderr; this prints the exception
// first ("Uncaught TypeError: ..."), which the host quotes in the `trap`
// reply. Build with `npm run build`; write the procedure in app.js.
import { handler as app } from "./app.js";

export const handler = {
  handle(request) {
    try {
      return app.handle(request);
    } catch (error) {
      const isErr =
        typeof error === "string" ||
        (error !== null && typeof error === "object" && Object.hasOwn(error, "payload"));
      if (!isErr) {
        console.error(`Uncaught ${String(error)}`);
      }
      throw error;
    }
  },
};
