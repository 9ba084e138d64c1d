// P10's baseline: a worker that relays a WebSocket the way keygate's relay does (edge-worker/src/relay.rs)
// and checks nothing. It holds both ends, the client's (a WebSocketPair) and the origin's (an upgrade
// fetch), and copies every message across as it came, so what keygate adds over it is its own work:
// reading and checking client messages, the key checks, and the Rust/JS crossing. Closes pass through
// both ways. Anything that is not an upgrade is forwarded like bench/passthrough.js.
// Run by bench/workerd/relay.mjs with the binding ORIGIN_URL.

// The codes an endpoint may send on; the others (1005 no status, 1006 abnormal, ...) become 1000 or 1011,
// as keygate's `relayable_close` has it.
function relayable(code) {
  if (code === 1000 || (code >= 3000 && code <= 4999)) return code;
  return code === 1001 || code === 1005 ? 1000 : 1011;
}

function shut(socket, code, reason) {
  try {
    socket.close(code, reason);
  } catch {
    // Closed already.
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const target = env.ORIGIN_URL + url.pathname + url.search;
    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") return fetch(target, request);

    const protocol = request.headers.get("sec-websocket-protocol");
    const answer = await fetch(target, {
      headers: { upgrade: "websocket", ...(protocol ? { "sec-websocket-protocol": protocol } : {}) },
    });
    const origin = answer.webSocket;
    if (!origin) return new Response("the origin did not accept the WebSocket", { status: 502 });
    origin.accept();
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();

    server.addEventListener("message", (event) => origin.send(event.data));
    origin.addEventListener("message", (event) => server.send(event.data));
    server.addEventListener("close", (event) => shut(origin, relayable(event.code), event.reason));
    origin.addEventListener("close", (event) => shut(server, relayable(event.code), event.reason));
    server.addEventListener("error", () => shut(origin, 1000, "the client went away"));
    origin.addEventListener("error", () => shut(server, 1011, "the origin failed"));

    const chosen = answer.headers.get("sec-websocket-protocol");
    return new Response(null, {
      status: 101,
      webSocket: client,
      headers: chosen ? { "sec-websocket-protocol": chosen } : {},
    });
  },
};
