// What the workerd benchmarks (signing.mjs, relay.mjs) share: free ports, running a command, rounding,
// and the signed push that hands the keygate worker its records and signing key.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import net from "node:net";
import path from "node:path";

export function round(value, digits = 1) {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// A command's stdout; it must succeed.
export function run(command, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${path.basename(command)} ${args[0]} exited ${code}`))));
  });
}

// A signed push (DESIGN.md) of `payload` ({records, signing_keys?}) to the worker at `base`:
// HMAC-SHA256 hex over `timestamp + "." + body`. Throws unless it is applied.
export async function push(base, syncSecret, payload) {
  const body = JSON.stringify(payload);
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = createHmac("sha256", syncSecret).update(`${timestamp}.${body}`).digest("hex");
  const answer = await fetch(`${base}/_keygate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json", "X-Keygate-Timestamp": timestamp, "X-Keygate-Signature": signature },
    body,
  });
  const text = await answer.text();
  if (answer.status !== 200) throw new Error(`the push got ${answer.status}: ${text}`);
}
