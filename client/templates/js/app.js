// The `{{name}}` procedure: a Warren component (see README.md).
//
// `handle` gets each request's body (a Uint8Array) and returns the reply
// body (a Uint8Array); throwing a string makes a `procedure-error` reply with
// that text, throwing anything else (an Error) a `trap` whose message names
// it (entry.js sees to that). Each request runs in a fresh instance: nothing
// carries over between requests.

export const handler = {
  handle(request) {
    if (request.length === 0) {
      throw "empty request; send some bytes to echo";
    }
    return request;
  },
};
