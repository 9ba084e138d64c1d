// What relaying a GraphQL WebSocket through the edge costs (BENCHMARKS.md, P10): messages a second through
// each target against the same socket opened straight to the origin, in the same run.
//
// Targets, alternating within every case of every round:
//   direct             straight to the origin (the harness's ceiling);
//   passthrough-relay  bench/workerd/relay_passthrough.js: holds both ends (WebSocketPair + an upgrade fetch)
//                      and copies messages across, checking nothing: the runtime's own cost of a relay;
//   keygate            the built worker (edge-worker/build), a key record pushed through the signed
//                      /_keygate/sync, the key in the upgrade's X-API-Key header.
// Both workers are served straight from workerd through the miniflare API (not `wrangler dev`), one
// Miniflare each, started afresh every round. The origin is tests/graphql-node/origin.mjs (graphql-yoga,
// graphql-ws on /graphql) in its own process.
//
// Cases (graphql-transport-ws, frames written by hand over raw `ws`, so the client stays cheap):
//   stream-N     origin → client: `subscription { ticks(intervalMs: 0) }` on each of N sockets, `next`
//                messages received a second; every socket's ticks must arrive 1, 2, 3, ... (nothing lost,
//                duplicated or reordered);
//   ping-N       client → origin → client, closed loop: `ping` (payload {n}) → the origin's `pong` (same
//                payload, checked), one in flight per socket; round trips a second, latency p50/p99;
//   subscribe-N  closed loop of `subscribe` `{ hello }` → `next` (checked) + `complete`, one in flight per
//                socket: each goes through keygate's full operation check (key, permission, rate limit).
//                subscribe-N is opt-in: here the origin runs out of CPU first, for every target.
// The load runs in a child process of this script (`relay.mjs client <spec>`), which reports its own CPU
// (process.cpuUsage); this process samples the origin's and each workerd's CPU from /proc over the same
// window, and the machine's. Each round also proves the path measured: through keygate a wrong key's
// upgrade gets 401, a wrong key in connection_init gets close 4403, a mutation the key may not run gets an
// `error` and never reaches the origin, the origin's upgrades carry keygate's identity and never the key;
// and at the end a revoked key's open socket is closed with 4403. The stream cases also report how the
// relay treats everyone else meanwhile: whether a plain request sent mid-window is answered, whether the
// client's close gets its close frame back, and (once, at the end) whether a key that expires during a
// full-speed stream gets its socket closed.
//
//   KEYGATE_NODE_MODULES=... KEYGATE_GRAPHQL_NODE=... KEYGATE_BENCH_BIN=target/release/keygate-bench \
//     node bench/workerd/relay.mjs
//
// Env: RELAY_BENCH_ROUNDS (3), RELAY_BENCH_SECS (10), RELAY_BENCH_WARMUP (1), RELAY_BENCH_SOCKETS (8: the N
// of the many-socket cases), RELAY_BENCH_CASES (comma-separated subset of stream-1, stream-N, ping-1,
// ping-N, subscribe-1 and the opt-in subscribe-N), RELAY_BENCH_TARGETS (a subset of direct,
// passthrough-relay, keygate, plus the opt-in `proxy`: bench/passthrough.js, which hands the origin's
// socket back for workerd to pipe without JS), RELAY_BENCH_JSON (also write the JSON summary there);
// BENCH_MODE=smoke runs 1 round of 1 s each and judges nothing. Prints a Markdown report and the JSON summary to stdout, progress and the
// workers' logs to stderr. Exits 1 when a run did not measure what it claims (PROBLEM lines); how the relays
// behaved (NOTE lines: close frames not passed on, a side request kept waiting) is reported, not failed.

import { spawn, spawnSync } from "node:child_process";
import { createHash, webcrypto } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { keygateWorker, push as signedPush, round, run, served, workerdBench } from "./common.mjs";

const here = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(here), "../..");
const PROTOCOL = "graphql-transport-ws";
const STREAM_QUERY = "subscription { ticks(count: 2000000000, intervalMs: 0) }";
const HELLO_QUERY = "{ hello }";
// How long a client waits for its close frames to come back after the run.
const CLOSE_WAIT_MS = 3000;

// `ws` comes from the graphql-node cache folder (scripts/graphql-node.sh), not from the clone.
function loadWs() {
  const folder = process.env.KEYGATE_GRAPHQL_NODE;
  if (!folder) throw new Error("KEYGATE_GRAPHQL_NODE is not set (eval scripts/graphql-node.sh)");
  return createRequire(`${folder}/`)("ws");
}

if (process.argv[2] === "client") {
  await client(JSON.parse(process.argv[3])).catch((error) => {
    process.stdout.write(`${JSON.stringify({ event: "failed", message: String(error.stack ?? error) })}\n`);
  });
  process.exit();
} else {
  await main().catch((error) => {
    console.error(`relay bench: ${error.stack ?? error}`);
    process.exitCode = 1;
  });
  // The origin's process and pipes would keep this one alive.
  process.exit();
}

// ---------------------------------------------------------------------------------------------------------
// The load: one case against one target, in its own process. Prints `{"event":"window"}` when the measured
// window starts, `{"event":"end"}` when it ends, then `{"event":"result", ...}`.

async function client(spec) {
  const WebSocket = loadWs();
  const out = (object) => process.stdout.write(`${JSON.stringify(object)}\n`);
  const problems = [];
  const problem = (text) => {
    if (problems.length < 20) problems.push(text);
  };
  let phase = "connecting"; // → warmup → window → done
  let counted = 0; // messages (stream) or round trips (ping, subscribe) within the window
  let total = 0; // the same over the whole run
  let after = 0; // stream messages that arrived after the window, before the close frame
  const latencies = []; // ms, within the window

  // One socket: open with the spec's headers, connection_init, wait for connection_ack.
  const open = (index) =>
    new Promise((resolve, reject) => {
      const socket = new WebSocket(spec.url, PROTOCOL, { headers: spec.headers, perMessageDeflate: false });
      socket.index = index;
      socket.on("unexpected-response", (_request, response) => reject(new Error(`socket ${index}: upgrade answered ${response.statusCode}`)));
      socket.on("error", (error) => {
        if (phase === "connecting") reject(error);
        else problem(`socket ${index}: ${error.message}`);
      });
      socket.on("close", (code, reason) => {
        socket.closedWith = code;
        if (phase !== "done") problem(`socket ${index} closed during the run: ${code} ${reason}`);
      });
      socket.once("open", () => socket.send('{"type":"connection_init"}'));
      socket.once("message", (data) => {
        const text = data.toString();
        if (!text.includes('"connection_ack"')) return reject(new Error(`socket ${index}: ${text} instead of connection_ack`));
        resolve(socket);
      });
    });
  const sockets = await Promise.all(Array.from({ length: spec.sockets }, (_, i) => open(i)));

  if (spec.kind === "stream") {
    for (const socket of sockets) {
      let last = 0;
      socket.gaps = 0;
      socket.on("message", (data) => {
        // `{"id":"s","type":"next","payload":{"data":{"ticks":N}}}`: read N without a JSON parse.
        const text = data.toString();
        const at = text.indexOf('"ticks":');
        if (at < 0) return phase === "done" ? undefined : problem(`socket ${socket.index}: ${text.slice(0, 200)}`);
        const value = Number.parseInt(text.slice(at + 8), 10);
        if (value !== last + 1) {
          socket.gaps += 1;
          problem(`socket ${socket.index}: tick ${value} after ${last}`);
        }
        last = value;
        total += 1;
        if (phase === "window") counted += 1;
        else if (phase === "done") after += 1;
      });
      socket.last = () => last;
      socket.send(JSON.stringify({ id: "s", type: "subscribe", payload: { query: STREAM_QUERY } }));
    }
  } else if (spec.kind === "ping") {
    for (const socket of sockets) {
      let n = 0;
      let sent = 0;
      const next = () => {
        if (phase === "done") return;
        n += 1;
        sent = performance.now();
        socket.send(`{"type":"ping","payload":{"n":${n}}}`);
      };
      socket.on("message", (data) => {
        const message = JSON.parse(data.toString());
        if (message.type !== "pong" || message.payload?.n !== n) problem(`socket ${socket.index}: ${JSON.stringify(message)} for ping ${n}`);
        total += 1;
        if (phase === "window") {
          counted += 1;
          latencies.push(performance.now() - sent);
        }
        next();
      });
      socket.start = next;
    }
  } else if (spec.kind === "subscribe") {
    for (const socket of sockets) {
      let n = 0;
      let sent = 0;
      let answered = false;
      const next = () => {
        if (phase === "done") return;
        n += 1;
        answered = false;
        sent = performance.now();
        socket.send(`{"id":"q${n}","type":"subscribe","payload":{"query":"${HELLO_QUERY}"}}`);
      };
      socket.on("message", (data) => {
        const message = JSON.parse(data.toString());
        if (message.id !== `q${n}`) return problem(`socket ${socket.index}: ${JSON.stringify(message)} for q${n}`);
        if (message.type === "next") {
          if (message.payload?.data?.hello !== "world" || answered) problem(`socket ${socket.index}: ${JSON.stringify(message)}`);
          answered = true;
        } else if (message.type === "complete") {
          if (!answered) problem(`socket ${socket.index}: q${n} completed without a result`);
          total += 1;
          if (phase === "window") {
            counted += 1;
            latencies.push(performance.now() - sent);
          }
          next();
        } else {
          problem(`socket ${socket.index}: ${JSON.stringify(message).slice(0, 300)}`);
          next();
        }
      });
      socket.start = next;
    }
  } else {
    throw new Error(`unknown case kind ${spec.kind}`);
  }

  phase = "warmup";
  for (const socket of sockets) socket.start?.();
  await sleep(spec.warmup * 1000);
  phase = "window";
  counted = 0;
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  out({ event: "window" });
  await sleep(spec.seconds * 1000);
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  phase = "done";
  const inWindow = counted;
  out({ event: "end" });

  // Stop: complete the stream, close every socket and wait (CLOSE_WAIT_MS at most) for the close
  // handshake, which a relay has to pass on both ways; how long the last close frame took says how much a
  // relay had queued.
  const closing = performance.now();
  let closeMs = null;
  const closed = sockets.map(
    (socket) =>
      new Promise((resolve) => {
        if (socket.readyState === WebSocket.CLOSED) return resolve();
        socket.once("close", resolve);
      }),
  );
  for (const socket of sockets) {
    if (spec.kind === "stream" && socket.readyState === WebSocket.OPEN) socket.send('{"id":"s","type":"complete"}');
    socket.close(1000, "done");
  }
  await Promise.race([Promise.all(closed).then(() => (closeMs = round(performance.now() - closing, 0))), sleep(CLOSE_WAIT_MS)]);
  const unclosed = sockets.filter((s) => s.closedWith === undefined).length;
  for (const socket of sockets) socket.terminate();

  const sorted = Float64Array.from(latencies).sort();
  const quantile = (q) => (sorted.length ? round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))], 3) : null);
  out({
    event: "result",
    count: inWindow,
    total,
    seconds: round(elapsed, 3),
    rate: round(inWindow / elapsed, 0),
    p50_ms: quantile(0.5),
    p99_ms: quantile(0.99),
    client_cpu_pct: round(((cpu.user + cpu.system) / 1e6 / elapsed) * 100, 1),
    gaps: spec.kind === "stream" ? sockets.reduce((sum, s) => sum + s.gaps, 0) : undefined,
    last_ticks: spec.kind === "stream" ? sockets.map((s) => s.last()) : undefined,
    close_codes: [...new Set(sockets.map((s) => s.closedWith ?? "none"))],
    unclosed,
    close_ms: closeMs,
    after_window: spec.kind === "stream" ? after : undefined,
    problems,
  });
}

// ---------------------------------------------------------------------------------------------------------
// The run.

async function main() {
  const { env, smoke, rounds, seconds, warmup, bin, Miniflare, compatibilityDate, built } = workerdBench(
    "RELAY_BENCH",
    { warmup: 1 },
  );
  const many = Number(env.RELAY_BENCH_SOCKETS ?? 8);
  const graphqlNode = env.KEYGATE_GRAPHQL_NODE;
  if (!graphqlNode || !existsSync(path.join(graphqlNode, "origin.mjs"))) {
    throw new Error("KEYGATE_GRAPHQL_NODE must name the folder scripts/graphql-node.sh prints");
  }
  const WebSocket = loadWs();
  const clockTicks = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

  const children = [];
  const live = new Set(); // Miniflare instances running now
  const stop = () => {
    for (const child of children) child.kill("SIGKILL");
  };
  process.on("exit", stop);
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, async () => {
      await Promise.all([...live].map((mf) => mf.dispose().catch(() => {})));
      stop();
      process.exit(130);
    });
  }

  // The origin, in its own process.
  const originChild = spawn(process.execPath, [path.join(graphqlNode, "origin.mjs"), "0"], {
    cwd: graphqlNode,
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(originChild);
  const originPort = await new Promise((resolve, reject) => {
    let text = "";
    originChild.stdout.on("data", (chunk) => {
      text += chunk;
      const match = text.match(/listening (\d+)/);
      if (match) resolve(Number(match[1]));
    });
    originChild.once("exit", (code) => reject(new Error(`the origin exited (${code})`)));
  });
  const originUrl = `http://127.0.0.1:${originPort}`;
  const originLog = async () => (await fetch(`${originUrl}/_origin/log`)).json();
  const originReset = async () => (await fetch(`${originUrl}/_origin/reset`, { method: "POST" })).json();

  // The key, its record and the sealed signing key, made by the Rust code the control plane uses. The
  // fixture's key may read; the stream cases need subscriptions too (and a mutation must stay refused).
  const syncSecret = webcrypto.getRandomValues(Buffer.alloc(32)).toString("hex");
  const originSecret = webcrypto.getRandomValues(Buffer.alloc(32)).toString("hex");
  const fixture = JSON.parse(await run(bin, ["fixture", "--sync-secret", syncSecret]));
  fixture.record.permissions = [...new Set([...fixture.record.permissions, "query:read", "subscription:read"])];
  const apiKey = fixture.api_key;
  // Every target gets the same upgrade headers; only keygate reads them.
  const headers = { "X-API-Key": apiKey };

  const logs = { "passthrough-relay": [], keygate: [], proxy: [] };
  const workerOptions = {
    "passthrough-relay": {
      scriptPath: path.join(root, "bench/workerd/relay_passthrough.js"),
      modulesRoot: path.join(root, "bench/workerd"),
      bindings: { ORIGIN_URL: originUrl },
    },
    // Opt-in (RELAY_BENCH_TARGETS): bench/passthrough.js returns the origin's upgrade response as it is, so
    // workerd pipes the socket natively and no message goes through JS: a floor no message-reading relay
    // can reach.
    proxy: {
      scriptPath: path.join(root, "bench/passthrough.js"),
      modulesRoot: path.join(root, "bench"),
      bindings: { ORIGIN_URL: originUrl },
    },
    keygate: keygateWorker(built, {
      ORIGIN_URL: originUrl,
      SYNC_SECRET: syncSecret,
      ORIGIN_SECRET: originSecret,
      TIERS: '{"default": 100000000}',
      FAILED_ATTEMPTS_PER_MINUTE: "0",
      // The closed loops send thousands of messages a second on one socket: past the default limit
      // (100 a second, WS_MESSAGES_PER_SEC) keygate would close it with 4429, as it should a client.
      WS_MESSAGES_PER_SEC: "0",
    }),
  };

  // A worker in its own workerd: its base URL and workerd's pid (for /proc).
  async function startWorker(name) {
    const before = new Set(workerdChildren());
    const mf = new Miniflare({
      ...(await served(compatibilityDate)),
      // Everything the worker and workerd say goes to stderr, and is kept to count errors.
      handleRuntimeStdio: (stdout, stderr) => {
        stdout.resume();
        stderr.on("data", (chunk) => {
          const text = String(chunk);
          logs[name].push(...text.split("\n").filter(Boolean).map((line) => `stderr: ${line}`));
          process.stderr.write(`[${name} stderr] ${text}`);
        });
      },
      handleStructuredLogs: ({ level, message }) => {
        logs[name].push(`${level}: ${message}`);
        process.stderr.write(`[${name} ${level}] ${message}\n`);
      },
      ...workerOptions[name],
    });
    live.add(mf);
    const base = new URL(await mf.ready).origin;
    const pids = workerdChildren().filter((pid) => !before.has(pid));
    return { name, mf, base, ws: `${base.replace(/^http/, "ws")}/graphql`, pid: pids.length === 1 ? pids[0] : null };
  }

  // `record` and the fixture's signing key, pushed to the worker at `base`.
  const push = (base, record) => signedPush(base, syncSecret, { records: [record], signing_keys: [fixture.signing_key] });

  // One socket for the probes: the upgrade's status if refused, the messages, the close code.
  // `send` goes at once, `afterAck` once connection_ack is in (graphql-ws refuses an operation before it).
  function probe(url, { headers: upgradeHeaders = {}, send = [], afterAck = [], until, timeoutMs = 5000 }) {
    return new Promise((resolve) => {
      const seen = { status: null, messages: [], close: null };
      const socket = new WebSocket(url, PROTOCOL, { headers: upgradeHeaders, perMessageDeflate: false });
      const done = () => {
        clearTimeout(timer);
        socket.terminate();
        resolve(seen);
      };
      const timer = setTimeout(done, timeoutMs);
      socket.on("unexpected-response", (_request, response) => {
        seen.status = response.statusCode;
        done();
      });
      socket.on("error", () => {});
      socket.on("open", () => {
        seen.status = 101;
        for (const message of send) socket.send(JSON.stringify(message));
      });
      socket.on("message", (data) => {
        const message = JSON.parse(data.toString());
        seen.messages.push(message);
        if (message.type === "connection_ack") for (const m of afterAck) socket.send(JSON.stringify(m));
        if (until?.(seen)) done();
      });
      socket.on("close", (code) => {
        seen.close = code;
        done();
      });
    });
  }

  // Proves, through keygate, that the edge checks what it relays: a wrong key's upgrade, a wrong key in
  // connection_init, a mutation the key may not run; and that a good key gets through.
  async function checkKeygate(worker) {
    const problems = [];
    const wrongKey = apiKey.slice(0, -1) + (apiKey.endsWith("A") ? "B" : "A");
    const refused = await probe(worker.ws, { headers: { "X-API-Key": wrongKey } });
    if (refused.status !== 401) problems.push(`an upgrade with a wrong key got ${refused.status}, not 401`);
    const badInit = await probe(worker.ws, { send: [{ type: "connection_init", payload: { "X-API-Key": wrongKey } }] });
    if (badInit.close !== 4403) problems.push(`a wrong key in connection_init got close ${badInit.close}, not 4403`);
    const before = (await originLog()).counter;
    const mutation = await probe(worker.ws, {
      headers,
      send: [{ type: "connection_init" }],
      afterAck: [{ id: "m", type: "subscribe", payload: { query: "mutation { bump }" } }],
      until: (seen) => seen.messages.some((m) => m.id === "m"),
    });
    const answer = mutation.messages.find((m) => m.id === "m");
    const code = answer?.payload?.[0]?.extensions?.code;
    if (answer?.type !== "error") problems.push(`a mutation the key may not run got ${JSON.stringify(answer)}`);
    if ((await originLog()).counter !== before) problems.push("the refused mutation reached the origin");
    const good = await probe(worker.ws, {
      headers,
      send: [{ type: "connection_init" }],
      afterAck: [{ id: "h", type: "subscribe", payload: { query: HELLO_QUERY } }],
      until: (seen) => seen.messages.some((m) => m.id === "h" && m.type === "complete"),
    });
    if (!good.messages.some((m) => m.id === "h" && m.payload?.data?.hello === "world")) {
      problems.push(`a good key's { hello } got ${JSON.stringify(good.messages)}`);
    }
    return { wrong_key_upgrade: refused.status, wrong_key_init_close: badInit.close, refused_mutation: code ?? answer?.type ?? null, problems };
  }

  // A revoked key's open socket closes with 4403 (the edge re-checks every 500 ms): how long it takes.
  async function checkRevocation(worker) {
    let revokedAt = 0;
    const seen = await new Promise((resolve) => {
      const socket = new WebSocket(worker.ws, PROTOCOL, { headers, perMessageDeflate: false });
      const result = { ticks: 0, close: null, ms: null };
      const timer = setTimeout(() => {
        socket.terminate();
        resolve(result);
      }, 10_000);
      socket.on("error", () => {});
      socket.on("open", () => socket.send('{"type":"connection_init"}'));
      socket.on("message", async (data) => {
        const message = JSON.parse(data.toString());
        if (message.type === "connection_ack") {
          socket.send(JSON.stringify({ id: "r", type: "subscribe", payload: { query: "subscription { ticks(intervalMs: 50) }" } }));
        } else if (message.type === "next" && ++result.ticks === 3) {
          revokedAt = performance.now();
          await push(worker.base, { ...fixture.record, seq: fixture.record.seq + 1, revoked: true });
        }
      });
      socket.on("close", (code) => {
        clearTimeout(timer);
        result.close = code;
        result.ms = revokedAt ? Math.round(performance.now() - revokedAt) : null;
        resolve(result);
      });
    });
    const problems = seen.close === 4403 ? [] : [`a revoked key's socket got close ${seen.close}, not 4403`];
    return { close: seen.close, ms_after_push: seen.ms, problems };
  }

  // The same under a stream at full speed (the origin faster than the relay): a second key that expires
  // 3 s after its push, streaming `ticks(intervalMs: 0)`; when (if) the edge's re-check closes it.
  async function checkExpiryUnderLoad(worker) {
    const second = JSON.parse(await run(bin, ["fixture", "--sync-secret", syncSecret]));
    const expiresAt = Math.floor(Date.now() / 1000) + 3;
    await push(worker.base, { ...second.record, permissions: fixture.record.permissions, expires_at: expiresAt });
    const seen = await new Promise((resolve) => {
      const socket = new WebSocket(worker.ws, PROTOCOL, { headers: { "X-API-Key": second.api_key }, perMessageDeflate: false });
      const result = { ticks: 0, close: null, ms_after_expiry: null };
      const timer = setTimeout(() => {
        socket.terminate();
        resolve(result);
      }, expiresAt * 1000 - Date.now() + 8000);
      socket.on("error", () => {});
      socket.on("open", () => socket.send('{"type":"connection_init"}'));
      socket.on("message", (data) => {
        result.ticks += 1;
        if (data.toString().includes("connection_ack")) {
          socket.send(JSON.stringify({ id: "x", type: "subscribe", payload: { query: STREAM_QUERY } }));
        }
      });
      socket.on("close", (code) => {
        clearTimeout(timer);
        result.close = code;
        result.ms_after_expiry = Date.now() - expiresAt * 1000;
        resolve(result);
      });
    });
    const findings =
      seen.close === 4403 && seen.ms_after_expiry < 2000
        ? []
        : [`a key that expired during a full-speed stream: ${seen.close === null ? "its socket was still open 8 s after expiry" : `close ${seen.close} ${seen.ms_after_expiry} ms after expiry`} (${seen.ticks} messages)`];
    return { close: seen.close, ms_after_expiry: seen.ms_after_expiry, messages: seen.ticks, findings };
  }

  const allCases = [
    { name: "stream-1", kind: "stream", sockets: 1 },
    { name: `stream-${many}`, kind: "stream", sockets: many },
    { name: "ping-1", kind: "ping", sockets: 1 },
    { name: `ping-${many}`, kind: "ping", sockets: many },
    { name: "subscribe-1", kind: "subscribe", sockets: 1 },
    // Opt-in: the node origin runs out of CPU at about the same rate for all three targets here (~8,000
    // operations a second), so it measures the origin, not the relay.
    { name: `subscribe-${many}`, kind: "subscribe", sockets: many, optIn: true },
  ];
  const pickCases = env.RELAY_BENCH_CASES?.split(",").map((c) => c.replace(/-N$/, `-${many}`));
  const cases = allCases.filter((c) => (pickCases ? pickCases.includes(c.name) : !c.optIn));
  const targets = env.RELAY_BENCH_TARGETS
    ? ["direct", "proxy", "passthrough-relay", "keygate"].filter((t) => env.RELAY_BENCH_TARGETS.split(",").includes(t))
    : ["direct", "passthrough-relay", "keygate"];
  const runs = {}; // case → target → [result]
  for (const c of cases) runs[c.name] = Object.fromEntries(targets.map((t) => [t, []]));
  const checks = [];
  const memory = []; // workerd RSS after each case, per target

  // One case against one target: the client in its own process, CPU sampled over its window.
  async function measure(kase, target, worker, round) {
    await originReset();
    const url = target === "direct" ? `ws://127.0.0.1:${originPort}/graphql` : worker.ws;
    const spec = { url, headers, kind: kase.kind, sockets: kase.sockets, seconds, warmup };
    const pids = { origin: originChild.pid, ...(worker?.pid ? { workerd: worker.pid } : {}) };
    const child = spawn(process.execPath, [here, "client", JSON.stringify(spec)], { stdio: ["ignore", "pipe", "inherit"] });
    const samples = {};
    // Stream cases: another client's plain HTTP request, sent halfway through the window, to the same
    // target; how long it waits says whether the target still serves anyone else while a stream runs.
    let sideRequest;
    const sideUrl = target === "direct" ? `${originUrl}/_origin/log` : `${worker.base}/graphql?query=%7B%20hello%20%7D`;
    const result = await new Promise((resolve, reject) => {
      let buffer = "";
      child.stdout.on("data", (chunk) => {
        buffer += chunk;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = JSON.parse(buffer.slice(0, newline));
          buffer = buffer.slice(newline + 1);
          if (line.event === "window") {
            samples.start = sample(pids);
            if (kase.kind === "stream") sideRequest = sleep((seconds * 1000) / 2).then(() => timedRequest(sideUrl));
          }
          else if (line.event === "end") samples.end = sample(pids);
          else if (line.event === "result") resolve(line);
          else if (line.event === "failed") reject(new Error(`${kase.name} via ${target}: ${line.message}`));
        }
      });
      child.once("exit", (code) => setTimeout(() => reject(new Error(`${kase.name} via ${target}: the client exited ${code}`)), 100));
    });
    const cpu = samples.start && samples.end ? cpuBetween(samples.start, samples.end, clockTicks) : {};
    const side = sideRequest ? await sideRequest : undefined;

    // What the origin saw: one upgrade per socket, keygate's identity on each and never the key; every
    // operation that was answered; every socket closed once the client closed its own.
    const problems = [...result.problems];
    let log = await originLog();
    for (let waited = 0; log.closes.length < kase.sockets && waited < 2000; waited += 100) {
      await sleep(100);
      log = await originLog();
    }
    if (log.upgrades.length !== kase.sockets) problems.push(`the origin saw ${log.upgrades.length} upgrades for ${kase.sockets} sockets`);
    for (const upgrade of log.upgrades) {
      const h = upgrade.headers;
      if (target === "keygate" && (!h.authorization?.startsWith("Bearer ") || !h["x-keygate-key-id"])) {
        problems.push("an upgrade reached the origin without keygate's identity");
        break;
      }
      if (target === "keygate" && h["x-api-key"]) {
        problems.push("the API key reached the origin");
        break;
      }
    }
    // Over the sockets only: the stream cases' mid-window request reaches the origin as HTTP.
    const operations = log.operations.filter((o) => o.transport === "ws").length;
    const expectedOps = kase.kind === "stream" ? kase.sockets : kase.kind === "subscribe" ? result.total : 0;
    if (kase.kind === "subscribe" ? operations < expectedOps : operations !== expectedOps) {
      problems.push(`the origin ran ${operations} operations, the client had ${expectedOps} answered`);
    }
    // Not measurement errors but how the relay behaved: reported, not failed.
    const findings = [];
    if (result.unclosed) findings.push(`${result.unclosed} client socket(s) got no close frame back within ${CLOSE_WAIT_MS / 1000} s (then cut)`);
    if (log.closes.length < kase.sockets) findings.push(`${kase.sockets - log.closes.length} origin socket(s) still open 2 s after the client went`);
    if (side && (side.ms === null || side.ms > 1000)) findings.push(`a request sent mid-window waited ${side.ms === null ? "forever" : `${side.ms} ms`}`);
    if (worker?.pid) memory.push({ round, case: kase.name, target, workerd_rss_mib: rssMib(worker.pid) });

    const entry = {
      round,
      workerd_us_per_message:
        cpu.workerd_cpu_pct !== undefined && result.rate ? Math.round((cpu.workerd_cpu_pct / 100 / result.rate) * 1e7) / 10 : undefined,
      rate: result.rate,
      count: result.count,
      seconds: result.seconds,
      p50_ms: result.p50_ms,
      p99_ms: result.p99_ms,
      client_cpu_pct: result.client_cpu_pct,
      ...cpu,
      gaps: result.gaps,
      origin_operations: operations,
      origin_close_codes: [...new Set(log.closes.map((c) => c.code))],
      client_close_codes: result.close_codes,
      close_ms: result.close_ms,
      after_window: result.after_window,
      side_request_ms: side?.ms,
      side_request_status: side?.status,
      problems,
      findings,
    };
    runs[kase.name][target].push(entry);
    const latency =
      result.p50_ms === null
        ? `  close frame after ${result.close_ms ?? "–"} ms, side request ${side?.ms ?? "–"} ms`
        : `  p50 ${result.p50_ms} ms  p99 ${result.p99_ms} ms`;
    const load = `client ${entry.client_cpu_pct}%  origin ${entry.origin_cpu_pct ?? "?"}%  workerd ${entry.workerd_cpu_pct ?? "-"}%  machine ${entry.machine_busy_pct ?? "?"}% of ${os.availableParallelism() * 100}%`;
    console.error(
      `  round ${round} ${kase.name.padEnd(12)} ${target.padEnd(17)} ${String(result.rate).padStart(7)} msgs/s${latency}  ${load}${findings.length ? `  NOTE: ${findings.join("; ")}` : ""}${problems.length ? `  PROBLEM: ${problems.join("; ")}` : ""}`,
    );
  }

  // A plain GET: its status and how long it took (null: no answer within a minute).
  async function timedRequest(url) {
    const started = performance.now();
    try {
      const answer = await fetch(url, { signal: AbortSignal.timeout(60_000) });
      await answer.arrayBuffer();
      return { status: answer.status, ms: Math.round(performance.now() - started) };
    } catch {
      return { status: null, ms: null };
    }
  }

  const startedAt = Date.now();
  console.error(
    `== relay bench: ${cases.length} cases × ${targets.length} targets × ${rounds} rounds × ${seconds} s (+${warmup} s warm-up)${smoke ? " (smoke)" : ""}`,
  );
  for (let round = 1; round <= rounds; round += 1) {
    const workers = {};
    for (const name of targets.filter((t) => t !== "direct")) workers[name] = await startWorker(name);
    try {
      if (workers.keygate) {
        await push(workers.keygate.base, fixture.record);
        const check = await checkKeygate(workers.keygate);
        checks.push({ round, ...check });
        console.error(`  round ${round} keygate checks: ${JSON.stringify(check)}`);
      }
      for (let i = 0; i < cases.length; i += 1) {
        // Each case starts one target later than the last, and each round one later again, so drift in
        // the machine's speed falls on every target.
        for (let j = 0; j < targets.length; j += 1) {
          const target = targets[(i + j + round - 1) % targets.length];
          await measure(cases[i], target, workers[target], round);
        }
      }
      if (workers.keygate && round === rounds) {
        const revocation = await checkRevocation(workers.keygate);
        checks.push({ round, revocation });
        console.error(`  round ${round} keygate revocation: ${JSON.stringify(revocation)}`);
        const expiry = await checkExpiryUnderLoad(workers.keygate);
        checks.push({ round, expiry_under_load: expiry });
        console.error(`  round ${round} keygate expiry under a full-speed stream: ${JSON.stringify(expiry)}`);
      }
    } finally {
      for (const worker of Object.values(workers)) {
        await worker.mf.dispose();
        live.delete(worker.mf);
      }
    }
  }

  const summary = summarize(runs, { rounds, seconds, warmup, sockets: many, smoke });
  summary.duration_s = Math.round((Date.now() - startedAt) / 1000);
  summary.checks = checks;
  summary.workerd_memory = memory;
  summary.worker_logs = Object.fromEntries(
    Object.entries(logs).filter(([name]) => targets.includes(name)).map(([name, lines]) => [
      name,
      { lines: lines.length, errors: lines.filter((l) => /^(error|stderr)/i.test(l)).length, first: lines.slice(0, 10) },
    ]),
  );
  const wasm = readFileSync(path.join(built, "index_bg.wasm"));
  summary.worker_wasm = { bytes: wasm.length, sha256: createHash("sha256").update(wasm).digest("hex") };
  const markdown = report(summary);
  if (env.RELAY_BENCH_JSON) writeFileSync(env.RELAY_BENCH_JSON, `${JSON.stringify(summary, null, 2)}\n`);
  process.stdout.write(`${markdown}\n\`\`\`json\n${JSON.stringify(summary, null, 2)}\n\`\`\`\n`);
  const problems = [
    ...Object.values(runs).flatMap((byTarget) => Object.values(byTarget).flat().flatMap((r) => r.problems)),
    ...checks.flatMap((c) => c.problems ?? c.revocation?.problems ?? []),
  ];
  if (problems.length) {
    console.error(`relay bench: ${problems.length} problem(s): a run did not measure what it should (see PROBLEM above)`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------------------
// CPU and memory from /proc.

// The pids of this process's workerd children.
function workerdChildren() {
  const pids = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === process.pid && comm.startsWith("workerd")) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

// utime + stime of each pid (clock ticks), the machine's busy and total ticks, and the time.
function sample(pids) {
  const out = { at: performance.now(), pids: {} };
  for (const [name, pid] of Object.entries(pids)) {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
      out.pids[name] = Number(fields[11]) + Number(fields[12]);
    } catch {
      out.pids[name] = null;
    }
  }
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] + cpu[4];
  out.machine = { total: cpu.reduce((a, b) => a + b, 0), busy: cpu.reduce((a, b) => a + b, 0) - idle };
  return out;
}

// Each process's CPU over the window as % of one core, and the machine's busy share as % of one core.
function cpuBetween(start, end, clockTicks) {
  const seconds = (end.at - start.at) / 1000;
  const out = {};
  for (const name of Object.keys(start.pids)) {
    if (start.pids[name] === null || end.pids[name] === null) continue;
    out[`${name}_cpu_pct`] = round(((end.pids[name] - start.pids[name]) / clockTicks / seconds) * 100, 1);
  }
  const total = end.machine.total - start.machine.total;
  if (total > 0) out.machine_busy_pct = round(((end.machine.busy - start.machine.busy) / total) * os.availableParallelism() * 100, 0);
  return out;
}

function rssMib(pid) {
  try {
    const kb = Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]);
    return round(kb / 1024, 1);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The summary and the report.

function median(values) {
  const sorted = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
  if (!sorted.length) return null;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// What was at a full core (or the machine full) while a target was measured; `latency` when nothing was:
// a closed loop on one socket waits on round trips, not on CPU.
function limits(t) {
  const out = [];
  if (t.workerd_cpu_pct >= 80) out.push("workerd");
  if (t.origin_cpu_pct >= 85) out.push("origin");
  if (t.client_cpu_pct >= 85) out.push("client");
  if (t.machine_busy_pct >= 190) out.push("machine");
  return out.length ? out : ["latency"];
}

function summarize(runs, settings) {
  const cases = {};
  for (const [name, byTarget] of Object.entries(runs)) {
    const targets = {};
    for (const [target, list] of Object.entries(byTarget)) {
      if (!list.length) continue;
      const m = (key) => median(list.map((r) => r[key]));
      targets[target] = {
        rate: m("rate"),
        p50_ms: m("p50_ms"),
        p99_ms: m("p99_ms"),
        client_cpu_pct: m("client_cpu_pct"),
        origin_cpu_pct: m("origin_cpu_pct"),
        workerd_cpu_pct: m("workerd_cpu_pct"),
        machine_busy_pct: m("machine_busy_pct"),
        // workerd's CPU time per message (all its threads): the relay's cost whether or not it is the
        // bottleneck.
        workerd_us_per_message: m("workerd_us_per_message"),
        runs: list,
      };
      targets[target].limited_by = limits(targets[target]);
    }
    const [direct, relay, keygate] = [targets.direct?.rate, targets["passthrough-relay"]?.rate, targets.keygate?.rate];
    const ratios = {};
    if (keygate && relay) ratios.keygate_over_passthrough = round(keygate / relay, 3);
    if (keygate && direct) ratios.keygate_over_direct = round(keygate / direct, 3);
    if (relay && direct) ratios.passthrough_over_direct = round(relay / direct, 3);
    // The time keygate's own work adds per message on the isolate's thread, where it is the bottleneck.
    if (keygate && relay) ratios.keygate_extra_us_per_message = round((1 / keygate - 1 / relay) * 1e6, 1);
    const [relayCpu, keygateCpu] = [targets["passthrough-relay"]?.workerd_us_per_message, targets.keygate?.workerd_us_per_message];
    if (relayCpu && keygateCpu) {
      ratios.keygate_extra_workerd_cpu_us_per_message = round(keygateCpu - relayCpu, 1);
      ratios.keygate_over_passthrough_workerd_cpu = round(keygateCpu / relayCpu, 2);
    }
    // The harness is not what limits a relay's figure when, while the relay was measured, neither the load
    // client nor the origin was near a full core and the machine was not full; direct against the faster
    // relay says the same from the other side.
    const relayed = Math.max(relay ?? 0, keygate ?? 0);
    const harness = direct && relayed ? { direct_over_fastest_relay: round(direct / relayed, 2) } : {};
    const outside = Object.entries(targets)
      .filter(([name]) => name === "passthrough-relay" || name === "keygate")
      .flatMap(([name, t]) => t.limited_by.filter((l) => l === "client" || l === "origin" || l === "machine").map((l) => `${name}: ${l}`));
    harness.relays_limited_by_harness = outside;
    harness.judged = !settings.smoke;
    harness.met = settings.smoke ? null : outside.length === 0;
    cases[name] = { targets, ratios, harness };
  }
  return { settings, machine: { cores: os.availableParallelism(), node: process.version }, cases };
}

function report(summary) {
  const { settings, cases } = summary;
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const lines = [
    `## WebSocket relay in workerd (${settings.rounds} round(s) × ${settings.seconds} s per case and target, +${settings.warmup} s warm-up, medians of the rounds)`,
    "",
    `Worker measured: edge-worker/build/index_bg.wasm, ${summary.worker_wasm.bytes} bytes, sha256 ${summary.worker_wasm.sha256.slice(0, 16)}…. Run took ${summary.duration_s} s.`,
    "",
    "| case | direct msgs/s | passthrough-relay msgs/s | keygate msgs/s | keygate / passthrough | keygate / direct | keygate extra per message, Δ(1/rate) | per round (direct; passthrough; keygate) |",
    "|---|---|---|---|---|---|---|---|",
  ];
  const proxyRows = [];
  for (const [name, c] of Object.entries(cases)) {
    const t = c.targets;
    const perRound = ["direct", "passthrough-relay", "keygate"].map((k) => t[k]?.runs.map((r) => fmt(r.rate)).join(", ") ?? "–").join("; ");
    if (t.proxy) proxyRows.push(`| ${name} | ${fmt(t.proxy.rate)} | ${t.direct ? `${round(t.proxy.rate / t.direct.rate, 3)}×` : "–"} |`);
    lines.push(
      `| ${name} | ${fmt(t.direct?.rate)} | ${fmt(t["passthrough-relay"]?.rate)} | ${fmt(t.keygate?.rate)} | ${c.ratios.keygate_over_passthrough ?? "–"}× | ${c.ratios.keygate_over_direct ?? "–"}× | ${c.ratios.keygate_extra_us_per_message ?? "–"} µs | ${perRound} |`,
    );
  }
  if (proxyRows.length) {
    lines.push("", "Opt-in target `proxy` (bench/passthrough.js: workerd pipes the socket itself, no message through JS):", "", "| case | proxy msgs/s | proxy / direct |", "|---|---|---|", ...proxyRows);
  }
  const present = ["direct", "proxy", "passthrough-relay", "keygate"].filter((t) => Object.values(cases).some((c) => c.targets[t]));
  lines.push("", "Latency of one round trip (closed loop), p50 / p99:", "", `| case | ${present.join(" | ")} |`, `|---|${present.map(() => "---|").join("")}`);
  for (const [name, c] of Object.entries(cases)) {
    if (!Object.values(c.targets).some((t) => t.p50_ms !== null)) continue;
    const cell = (t) => (t && t.p50_ms !== null ? `${t.p50_ms} / ${t.p99_ms} ms` : "–");
    lines.push(`| ${name} | ${present.map((t) => cell(c.targets[t])).join(" | ")} |`);
  }
  lines.push(
    "",
    "CPU over the measured window, % of one core (medians): the load client (its own process.cpuUsage), the origin (node, /proc), the worker's workerd (/proc), and the whole machine (/proc/stat, out of " +
      `${summary.machine.cores * 100}%):`,
    "",
    "| case | target | msgs/s | client | origin | workerd | machine | workerd CPU per message | at a full core |",
    "|---|---|---|---|---|---|---|---|---|",
  );
  for (const [name, c] of Object.entries(cases)) {
    for (const [target, t] of Object.entries(c.targets)) {
      lines.push(
        `| ${name} | ${target} | ${fmt(t.rate)} | ${t.client_cpu_pct ?? "–"}% | ${t.origin_cpu_pct ?? "–"}% | ${t.workerd_cpu_pct ?? "–"}% | ${t.machine_busy_pct ?? "–"}% | ${t.workerd_us_per_message ?? "–"} µs | ${t.limited_by.join(", ")} |`,
      );
    }
  }
  const cpuCost = Object.entries(cases).filter(([, c]) => c.ratios.keygate_extra_workerd_cpu_us_per_message !== undefined);
  if (cpuCost.length) {
    lines.push(
      "",
      `keygate's workerd CPU per message over the pass-through relay's: ${cpuCost
        .map(([name, c]) => `${name} +${c.ratios.keygate_extra_workerd_cpu_us_per_message} µs (${c.ratios.keygate_over_passthrough_workerd_cpu}×)`)
        .join(", ")}.`,
    );
  }
  const judged = Object.entries(cases).filter(([, c]) => c.harness.judged !== undefined);
  if (judged.length) {
    const smoke = settings.smoke;
    const missed = judged.filter(([, c]) => c.harness.met === false);
    lines.push(
      "",
      `Harness check (while each relay was measured, neither the load client nor the origin was at ≥ 85% of a core and the machine was below 190% of 200%; and direct against the faster relay): ${judged
        .map(([name, c]) => `${name} direct ${c.harness.direct_over_fastest_relay ?? "–"}×${c.harness.relays_limited_by_harness.length ? ` (${c.harness.relays_limited_by_harness.join(", ")})` : ""}`)
        .join("; ")}${smoke ? " (smoke mode: not judged)." : missed.length ? `: **missed** in ${missed.map(([n]) => n).join(", ")}.` : ": met."}`,
    );
  }
  const gateChecks = summary.checks.filter((c) => c.wrong_key_upgrade !== undefined);
  const revocation = summary.checks.find((c) => c.revocation)?.revocation;
  if (gateChecks.length || revocation) {
    const ok = gateChecks.every((c) => !c.problems.length);
    lines.push(
      "",
      `Path checks through keygate (every round): ${ok ? "passed" : "**failed**"}: a wrong key's upgrade got ${[...new Set(gateChecks.map((c) => c.wrong_key_upgrade))].join("/")}, a wrong key in connection_init got close ${[...new Set(gateChecks.map((c) => c.wrong_key_init_close))].join("/")}, a mutation the key may not run got \`${[...new Set(gateChecks.map((c) => c.refused_mutation))].join("/")}\` and never reached the origin` +
        (revocation ? `; a revoked key's open socket closed with ${revocation.close} ${revocation.ms_after_push} ms after the push.` : "."),
    );
  }
  const expiry = summary.checks.find((c) => c.expiry_under_load)?.expiry_under_load;
  if (expiry) {
    lines.push(
      "",
      `A key that expired during a full-speed stream through keygate (origin faster than the relay): ${expiry.close === null ? "**its socket was still open 8 s after expiry** (then cut by the client)" : `closed with ${expiry.close} ${expiry.ms_after_expiry} ms after expiry`}; ${expiry.messages} messages reached the client.`,
    );
  }
  const streams = Object.entries(cases).filter(([name]) => name.startsWith("stream"));
  if (streams.length) {
    const ms = (v) => (v === null || v === undefined ? "none" : `${v} ms`);
    lines.push(
      "",
      `Relay behaviour during the stream cases, per round: a plain HTTP request sent to the same target halfway through the window (answered after), and the close frame after the client's complete + close (none: not within ${CLOSE_WAIT_MS / 1000} s, then the client cut the TCP connection):`,
      "",
      "| case | target | mid-window request answered after | close frame back after |",
      "|---|---|---|---|",
    );
    for (const [name, c] of streams) {
      for (const [target, t] of Object.entries(c.targets)) {
        lines.push(`| ${name} | ${target} | ${t.runs.map((r) => ms(r.side_request_ms)).join(", ")} | ${t.runs.map((r) => ms(r.close_ms)).join(", ")} |`);
      }
    }
  }
  if (streams.length) {
    const gaps = streams.flatMap(([, c]) => Object.entries(c.targets).map(([t, v]) => `${t} ${v.runs.reduce((s, r) => s + (r.gaps ?? 0), 0)}`));
    lines.push("", `Stream order (ticks out of sequence, all rounds and stream cases): ${[...new Set(gaps)].join(", ")}.`);
  }
  const rss = summary.workerd_memory;
  if (rss.length) {
    const byTarget = {};
    for (const m of rss) (byTarget[m.target] ??= []).push(m.workerd_rss_mib);
    lines.push("", `workerd RSS after each case, MiB, in order: ${Object.entries(byTarget).map(([t, v]) => `${t} ${v.join(", ")}`).join("; ")}.`);
  }
  const logs = Object.entries(summary.worker_logs).map(([name, l]) => `${name} ${l.lines} line(s), ${l.errors} error(s)`);
  lines.push("", `Worker logs: ${logs.join("; ")}.`);
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------------------

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}


