// The floor under keygate's HTTP path: the runtime work it does for every admitted request, in plain JS
// and checking nothing. It reads the body, copies the client's headers without X-API-Key, Host and
// Authorization, adds four identity headers and a token (a fixed one from the binding `TOKEN`, as keygate reuses a key's),
// sends the body it read to the origin, and answers with the origin's answer in a new Response carrying
// the two rate-limit headers. What keygate costs above this worker is its own work (the checks, the
// wasm and its crossings); what this worker costs above the pass-through is the shape of the I/O.
// Run by bench/workerd/edge.mjs next to the other workers.
const DROPPED = ["x-api-key", "host", "authorization"];

export default {
  async fetch(request, env) {
    const body = request.method === "POST" ? await request.arrayBuffer() : undefined;
    const headers = new Headers(request.headers);
    for (const name of request.headers.keys()) {
      if (DROPPED.includes(name) || name.startsWith("x-keygate-")) headers.delete(name);
    }
    headers.set("x-keygate-key-id", env.KEY_ID);
    headers.set("x-keygate-tier", "default");
    headers.set("x-keygate-timestamp", Math.floor(Date.now() / 1000));
    headers.set("x-keygate-signature", env.SIGNATURE);
    headers.set("authorization", `Bearer ${env.TOKEN}`);
    const url = new URL(request.url);
    const answer = await fetch(env.ORIGIN_URL + url.pathname + url.search, { method: request.method, headers, body });
    const response = new Response(answer.body, answer);
    response.headers.set("x-ratelimit-limit", 1000000);
    response.headers.set("x-ratelimit-remaining", 999999);
    return response;
  },
};
