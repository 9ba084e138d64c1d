// What the workerd benchmarks (edge.mjs, relay.mjs, serve.mjs) share: their settings and tools, free ports,
// running a command, rounding, and the signed push that hands the keygate worker its records and
// signing key.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

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

// A signed push (DESIGN.md) of `payload` ({records, signing_keys?}) to the worker at `base`, sent with
// `send` (fetch's signature): HMAC-SHA256 hex over `timestamp + "." + body`. Throws unless it is applied.
export async function push(base, syncSecret, payload, send = fetch) {
  const body = JSON.stringify(payload);
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = createHmac("sha256", syncSecret).update(`${timestamp}.${body}`).digest("hex");
  const answer = await send(`${base}/_keygate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json", "X-Keygate-Timestamp": timestamp, "X-Keygate-Signature": signature },
    body,
  });
  const text = await answer.text();
  if (answer.status !== 200) throw new Error(`the push got ${answer.status}: ${text}`);
}

// What every workerd bench starts from: BENCH_MODE and the `<prefix>_ROUNDS`, `_SECS` and `_WARMUP`
// settings (smoke mode: 1 round of 1 s, judged by nobody), the keygate-bench binary (KEYGATE_BENCH_BIN;
// not checked with `needsBench: false`),
// miniflare from the pinned node tools (KEYGATE_NODE_MODULES), wrangler.toml's compatibility date and
// the built worker's folder. Throws when one is missing.
export function workerdBench(prefix, { warmup, needsBench = true }) {
  const env = process.env;
  const smoke = env.BENCH_MODE === "smoke";
  const number = (name, fallback) => (smoke || env[name] === undefined ? fallback : Number(env[name]));
  const bin = env.KEYGATE_BENCH_BIN;
  if (needsBench && (!bin || !existsSync(bin))) throw new Error("KEYGATE_BENCH_BIN must name the keygate-bench binary");
  if (!env.KEYGATE_NODE_MODULES) throw new Error("KEYGATE_NODE_MODULES is not set (eval scripts/tools.sh)");
  const { Miniflare } = createRequire(`${env.KEYGATE_NODE_MODULES}/`)("miniflare");
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
  const compatibilityDate = readFileSync(path.join(root, "wrangler.toml"), "utf8").match(
    /^compatibility_date\s*=\s*"([^"]+)"/m,
  )[1];
  const built = path.join(root, "edge-worker/build");
  if (!existsSync(path.join(built, "index.js"))) throw new Error("no built worker: run scripts/build-worker.sh");
  return {
    env,
    smoke,
    number,
    rounds: number(`${prefix}_ROUNDS`, smoke ? 1 : 3),
    seconds: number(`${prefix}_SECS`, smoke ? 1 : 10),
    warmup: number(`${prefix}_WARMUP`, smoke ? 0.5 : warmup),
    bin,
    Miniflare,
    compatibilityDate,
    built,
  };
}

// Miniflare's options for a module worker with its wasm, served on a free loopback port.
export async function served(compatibilityDate) {
  return {
    modules: true,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate,
    host: "127.0.0.1",
    port: await freePort(),
    cf: false,
  };
}

// Miniflare's options for the built keygate worker (`built`: edge-worker/build) with its KV namespace and
// these vars and secrets.
export function keygateWorker(built, bindings) {
  return {
    scriptPath: path.join(built, "index.js"),
    modulesRoot: built,
    kvNamespaces: ["KEYGATE_RECORDS"],
    bindings,
  };
}

// /proc's CPU times are in clock ticks: 100 a second on Linux.
const CLOCK_TICKS = 100;

// The CPU time (user + system, µs) the workerd processes this one started have used so far: what the
// runtime spends, on all its threads, whatever the machine's other load does to wall-clock figures.
// Linux's /proc; null elsewhere.
export function workerdCpuUs() {
  let ticks = 0;
  let found = false;
  let entries;
  try {
    entries = readdirSync("/proc");
  } catch {
    return null;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // `pid (comm) state ppid ...`: the fields after the comm, which may hold spaces.
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (comm !== "workerd" || Number(fields[1]) !== process.pid) continue;
    ticks += Number(fields[11]) + Number(fields[12]); // utime, stime
    found = true;
  }
  return found ? (ticks * 1e6) / CLOCK_TICKS : null;
}

// The machine's CPU time so far, from /proc/stat's first line: [total, steal] in ticks, or null. Steal is
// time the hypervisor gave to other machines while this one wanted to run: the share of it over a load
// says how far that run's wall-clock figures were the host's doing.
export function machineCpu() {
  try {
    const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1, 9).map(Number);
    return [fields.reduce((a, b) => a + b, 0), fields[7]];
  } catch {
    return null;
  }
}
