// The `{{name}}` procedure: a Warren component that uses what its manifest
// (`{{name}}.toml`) grants (see README.md).
//
// - A body that is a URL (`http://…`, `https://…`) is fetched with `fetch`
//   (wasi:http underneath), and the reply is the response body. The host
//   lets it through only to what `[http] allow` lists; anything else fails.
// - Any other body is answered `GREETING, BODY`, with `greeting` read from
//   `[config]` through `wasi:config/store`.
//
// `handle` may return a promise of bytes. Throwing a string makes a
// `procedure-error` reply; anything else a `trap` (entry.js). Each request
// runs in a fresh instance: nothing carries over between requests.
import { get } from "wasi:config/store@0.2.0-rc.1";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const handler = {
  async handle(request) {
    const text = decoder.decode(request);
    if (text.length === 0) {
      throw "empty request; send a name, or a URL to fetch";
    }
    if (text.startsWith("http://") || text.startsWith("https://")) {
      let response;
      try {
        response = await fetch(text);
      } catch (error) {
        throw `GET ${text}: ${error}`;
      }
      if (response.status >= 400) {
        throw `GET ${text}: status ${response.status}`;
      }
      return new Uint8Array(await response.arrayBuffer());
    }
    const greeting = get("greeting") ?? "hello";
    return encoder.encode(`${greeting}, ${text}`);
  },
};
