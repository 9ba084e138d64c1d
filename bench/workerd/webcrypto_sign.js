// What signing the origin's JWT through WebCrypto would cost the edge per request: the pass-through worker
// (bench/passthrough.js) plus, on every request, one ES256 JWT made as keygate makes it (the same header
// and claims, a fresh jti) and signed with `crypto.subtle.sign`, put into the forwarded request's
// Authorization header. The key is imported once per isolate from the JWK in `SIGNING_JWK` (a binding
// bench/workerd/edge.mjs generates). With `SIGN` = "0" it does all of that but the signature (the
// token carries 64 zero bytes instead), so the difference between the two is the WebCrypto call alone.
// Run by bench/workerd/edge.mjs next to the other workers.
const encoder = new TextEncoder();
let signingKey; // the isolate's imported key (a promise), made on first use

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function key(env) {
  signingKey ??= crypto.subtle.importKey(
    "jwk",
    JSON.parse(env.SIGNING_JWK),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
  return signingKey;
}

async function token(env) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: "ES256", kid: env.SIGNING_KID, typ: "JWT" };
  // keygate's claims (shared/src/jwt.rs), for the key id in TOKEN_SUB.
  const claims = {
    iss: "keygate",
    aud: "graphql",
    sub: env.TOKEN_SUB,
    iat: now,
    exp: now + 60,
    jti: base64url(crypto.getRandomValues(new Uint8Array(16))),
    scope: "query:read",
    tier: "default",
    tenant_id: "bench",
  };
  const input = `${base64url(encoder.encode(JSON.stringify(header)))}.${base64url(encoder.encode(JSON.stringify(claims)))}`;
  const signature =
    env.SIGN === "0"
      ? new Uint8Array(64)
      : new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, await key(env), encoder.encode(input)));
  return `${input}.${base64url(signature)}`;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.set("authorization", `Bearer ${await token(env)}`);
    return fetch(env.ORIGIN_URL + url.pathname + url.search, { method: request.method, headers, body: request.body });
  },
};
