// The HTTP path's I/O, in the runtime's JS (see src/forward.rs). The check, and every decision, is made in
// the wasm: this file reads the request, calls the check once, and carries out what it answered. It is a
// wasm-bindgen snippet, bundled by worker-build.

// Set once per isolate by the wasm (configure): the check, the answer for an origin that failed, the header
// names read and set, and which client headers are dropped.
let check;
let originFailed;
let names;
let dropped;
let prefix;
let elsewhere;

export function configure(checkFn, failedFn, headerNames, droppedNames, droppedPrefix, otherPath) {
  check = checkFn;
  originFailed = failedFn;
  names = headerNames;
  dropped = droppedNames;
  prefix = droppedPrefix;
  elsewhere = otherPath;
}

// What the check answers for an admitted request (made by the wasm, read below).
export function admitted(target, keyId, tier, timestamp, signature, authorization, limit, remaining) {
  return { target, keyId, tier, timestamp, signature, authorization, limit, remaining };
}

// A request that is plainly a GraphQL request over HTTP (a GET or a POST, no `Upgrade` header, and the
// push path nowhere in its URL) is served; anything else is left to the wasm's routing (`undefined`),
// which then calls serveHttp for what it finds to be one. Looking in JS saves the wasm reading the URL,
// the method and a header across the boundary on every request.
export function serveIfHttp(request, env, ctx) {
  const method = request.method;
  if ((method !== "POST" && method !== "GET") || request.headers.has("upgrade") || request.url.includes(elsewhere)) return undefined;
  return serveHttp(request, env, ctx);
}

// A GraphQL request over HTTP (GET or POST): checked, and sent to the origin if admitted.
export async function serveHttp(request, env, ctx) {
  const [apiKey, clientAddress, keyIdName, tierName, timestampName, signatureName, authorizationName, limitName, remainingName] = names;
  const method = request.method;
  const body = method === "POST" ? await request.arrayBuffer() : undefined;
  const client = request.headers;
  let verdict = check(env, ctx, method, request.url, client.get(apiKey), client.get(clientAddress), body);
  if (verdict instanceof Promise) verdict = await verdict;
  // A response is the edge's own answer: a refusal.
  if (verdict instanceof Response) return verdict;

  // The client's headers without those the origin must not get; the runtime gives names in lower case, as
  // `dropped` and `prefix` are.
  const headers = new Headers(client);
  for (const name of client.keys()) {
    if (dropped.includes(name) || name.startsWith(prefix)) headers.delete(name);
  }
  headers.set(keyIdName, verdict.keyId);
  headers.set(tierName, verdict.tier);
  headers.set(timestampName, verdict.timestamp);
  if (verdict.signature !== undefined) headers.set(signatureName, verdict.signature);
  if (verdict.authorization !== undefined) headers.set(authorizationName, verdict.authorization);
  let answer;
  try {
    answer = await fetch(verdict.target, { method, headers, body: body?.byteLength ? body : undefined });
  } catch (error) {
    return originFailed(verdict.keyId, error);
  }
  // The origin's answer as it is (status, headers, body stream), in a response whose headers may change.
  const response = new Response(answer.body, answer);
  response.headers.set(limitName, verdict.limit);
  response.headers.set(remainingName, verdict.remaining);
  return response;
}
