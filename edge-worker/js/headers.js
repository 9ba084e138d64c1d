// The HTTP path's header copy, in the runtime's JS (see src/forward.rs): which headers are dropped is
// decided in Rust (crate::identity) and handed over once per isolate, as `dropped` names and `prefix`.
// A copy made here costs the runtime one iteration; made from the wasm, every name would cross into it
// as a new string and come back as another.

// A copy of `client` (a Headers) without the names in `dropped` (an array) or starting with `prefix`.
// The runtime gives names in lower case, as `dropped` and `prefix` are.
export function forwardedHeaders(client, dropped, prefix) {
  const headers = new Headers(client);
  for (const name of client.keys()) {
    if (dropped.includes(name) || name.startsWith(prefix)) headers.delete(name);
  }
  return headers;
}
