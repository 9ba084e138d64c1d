// What each edge worker costs per request inside one workerd, with no network in the way: P1's
// companion for judging a before and after. edge.mjs measures the workers as clients reach them (HTTP
// over loopback, a load tool, an origin in another process, one worker after another); on a host whose
// speed moves by a third between seconds, its rounds differ by more than the changes being judged. Here
// one workerd process holds every worker, a driver worker sends each the same GraphQL POST through a
// service binding, and the workers' fetches to their origin go to an origin worker in the same process
// (miniflare's `outboundService`). The workers take turns in blocks of requests, and each worker's time
// per request is its median block, so a burst of the host's falls on a few blocks and is left out. What a
// worker adds is its time minus the pass-through's in the same round; the driver's and the origin's work
// is in both. These figures are larger than edge.mjs's (a service binding and an origin worker cost more
// than a loopback socket), so compare them with each other, not with P1's goals.
//
//   KEYGATE_NODE_MODULES=... KEYGATE_BENCH_BIN=target/release/keygate-bench node bench/workerd/inproc.mjs
//
// Env: INPROC_ROUNDS (12), INPROC_BLOCKS (blocks per worker and round, 20), INPROC_BLOCK (requests a
// block, 100), INPROC_CONNECTIONS (requests in flight at once, 8), INPROC_WORKERS (a comma-separated
// subset of passthrough, io-floor, keygate, keygate-compare), EDGE_BENCH_COMPARE (a copy of another
// build's edge-worker/build: adds it as keygate-compare), INPROC_JS (comma-separated paths of plain JS
// workers to put beside them, each named by its file name, with io-floor's bindings and checked as
// io-floor is: a variant of io_floor.js, say, to find what part of the runtime's I/O costs what),
// EDGE_BENCH_PIN (0: do not pin workerd to CPU 0), INPROC_JSON (also write the JSON summary there).
// BENCH_MODE=smoke runs 1 round of 2 blocks of 16 and judges nothing. Prints a Markdown table and the JSON summary to stdout, progress to stderr. Exits
// non-zero when a worker answered anything but 200, or the origin did not see what the workers should
// have sent (a token from every checking worker, and an X-API-Key only from the pass-through).

import { execFileSync } from "node:child_process";
import { webcrypto } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { keygateWorker, machineCpu, push as signedPush, round, run, served, workerdBench } from "./common.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const QUERY = '{"query":"{ hello }"}';
const ORIGIN_URL = "http://origin.test";

// The driver. `/load?targets=a,b,c&block=&blocks=&c=` sends GraphQL POSTs to the workers bound as those
// names, c at a time, in blocks of `block` requests: the first block to a, the next to b, and so on, for
// `blocks` blocks, reading every answer. It returns, per worker, the requests, their statuses and the
// milliseconds each of its blocks took. The workers take turns every few tens of milliseconds, so a change
// in the machine's speed falls on all of them alike, and a burst of the host's own (which stalls a block
// now and then) is left out by taking the median block. The clock is the runtime's, which moves at I/O:
// each block ends on an answer. `/to/<target>/<path>` passes a request
// on (the push); `/origin-stats` asks the origin what it saw since the last time.
const DRIVER = `
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/origin-stats") return env.origin.fetch("http://origin.test/_stats");
    if (url.pathname.startsWith("/to/")) {
      const [, , target, ...rest] = url.pathname.split("/");
      return env[target].fetch(new Request("http://edge.test/" + rest.join("/"), request));
    }
    const names = url.searchParams.get("targets").split(",");
    const block = Number(url.searchParams.get("block"));
    const blocks = Number(url.searchParams.get("blocks"));
    const lanes = Number(url.searchParams.get("c"));
    const key = request.headers.get("x-api-key");
    const results = Object.fromEntries(names.map((name) => [name, { requests: 0, blocks: [], statuses: {} }]));
    for (let b = 0; b < blocks; b += 1) {
      const name = names[b % names.length];
      const target = env[name];
      const result = results[name];
      let sent = 0;
      const lane = async () => {
        while (sent < block) {
          sent += 1;
          const answer = await target.fetch("http://edge.test/graphql", {
            method: "POST",
            headers: { "content-type": "application/json", "x-api-key": key },
            body: ${JSON.stringify(QUERY)},
          });
          await answer.arrayBuffer();
          result.statuses[answer.status] = (result.statuses[answer.status] ?? 0) + 1;
        }
      };
      const started = Date.now();
      await Promise.all(Array.from({ length: lanes }, lane));
      result.blocks.push(Date.now() - started);
      result.requests += block;
    }
    return Response.json(results);
  },
};`;

// The origin: answers every request at once, and counts what came in (requests, how many carried a
// Bearer token, how many distinct tokens, how many an X-API-Key) until \`/_stats\` reads and resets them.
const ORIGIN = `
let seen = { requests: 0, bearer: 0, keys: 0, tokens: new Set() };
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/_stats") {
      const stats = { requests: seen.requests, bearer: seen.bearer, keys: seen.keys, distinct: seen.tokens.size };
      seen = { requests: 0, bearer: 0, keys: 0, tokens: new Set() };
      return Response.json(stats);
    }
    if (url.pathname === "/_keygate/usage") return new Response("{}");
    seen.requests += 1;
    if (request.headers.has("x-api-key")) seen.keys += 1;
    const authorization = request.headers.get("authorization");
    if (authorization?.startsWith("Bearer ")) {
      seen.bearer += 1;
      seen.tokens.add(authorization);
    }
    await request.arrayBuffer();
    return new Response('{"data":{"hello":"world"}}', { headers: { "content-type": "application/json" } });
  },
};`;

async function main() {
  const { env, smoke, number, Miniflare, compatibilityDate, built, bin } = workerdBench("INPROC", { warmup: 0 });
  const rounds = number("INPROC_ROUNDS", smoke ? 1 : 12);
  const block = number("INPROC_BLOCK", smoke ? 16 : 100);
  const blocksEach = number("INPROC_BLOCKS", smoke ? 2 : 20);
  const connections = number("INPROC_CONNECTIONS", 8);

  const syncSecret = webcrypto.getRandomValues(Buffer.alloc(32)).toString("hex");
  const originSecret = webcrypto.getRandomValues(Buffer.alloc(32)).toString("hex");
  const fixture = JSON.parse(await run(bin, ["fixture", "--sync-secret", syncSecret]));
  const keygateBindings = {
    ORIGIN_URL,
    SYNC_SECRET: syncSecret,
    ORIGIN_SECRET: originSecret,
    TIERS: '{"default": 1000000000}',
    FAILED_ATTEMPTS_PER_MINUTE: "0",
    // As deployed: usage counted and flushed (to the origin worker, which takes and drops it).
    CONTROL_PLANE_URL: ORIGIN_URL,
  };
  // expect: what the origin must see. `reused`: a token on every request, few distinct ones; `none`: no token.
  const ioFloorBindings = { ORIGIN_URL, KEY_ID: fixture.record.key_id, SIGNATURE: "0".repeat(64), TOKEN: `${"e".repeat(36)}.${"c".repeat(200)}.${"s".repeat(86)}` };
  const plainJs = (scriptPath) => ({
    name: path.basename(scriptPath, path.extname(scriptPath)),
    options: { scriptPath: path.resolve(scriptPath), modulesRoot: path.dirname(path.resolve(scriptPath)), bindings: ioFloorBindings },
    expect: "reused",
  });
  const targets = [
    { name: "passthrough", options: { scriptPath: path.join(root, "bench/passthrough.js"), modulesRoot: path.join(root, "bench"), bindings: { ORIGIN_URL } }, expect: "none" },
    { ...plainJs(path.join(root, "bench/workerd/io_floor.js")), name: "io-floor" },
    { name: "keygate", options: keygateWorker(built, keygateBindings), push: true, expect: "reused" },
    ...(env.EDGE_BENCH_COMPARE
      ? [{ name: "keygate-compare", options: keygateWorker(path.resolve(env.EDGE_BENCH_COMPARE), keygateBindings), push: true, expect: "reused" }]
      : []),
    ...(env.INPROC_JS ? env.INPROC_JS.split(",").map(plainJs) : []),
  ].filter((t) => !env.INPROC_WORKERS || env.INPROC_WORKERS.split(",").includes(t.name));

  const pinned = env.EDGE_BENCH_PIN !== "0" && os.availableParallelism() >= 2;
  if (pinned) execFileSync("taskset", ["-a", "-p", "-c", "0", String(process.pid)], { stdio: "ignore" });
  const mf = new Miniflare({
    ...(await served(compatibilityDate)),
    handleRuntimeStdio: (stdout, stderr) => {
      stdout.resume();
      stderr.on("data", (chunk) => process.stderr.write(chunk));
    },
    workers: [
      { name: "driver", modules: true, script: DRIVER, serviceBindings: Object.fromEntries([...targets.map((t) => [t.name, t.name]), ["origin", "origin"]]) },
      { name: "origin", modules: true, script: ORIGIN },
      ...targets.map((t) => ({ name: t.name, modules: true, modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }], outboundService: "origin", ...t.options })),
    ],
  });
  // The node process only waits on workerd: back on CPU 1, so workerd has CPU 0 to itself.
  if (pinned) execFileSync("taskset", ["-p", "-c", "1", String(process.pid)], { stdio: "ignore" });
  const problems = [];
  try {
    // Every request to the driver goes through miniflare's own dispatcher: a load runs for seconds, and a
    // pooled keep-alive connection may not outlive it.
    const base = new URL(await mf.ready).origin;
    const fetch = (url, init) => mf.dispatchFetch(url, init);
    for (const target of targets.filter((t) => t.push)) {
      await signedPush(`${base}/to/${target.name}`, syncSecret, { records: [fixture.record], signing_keys: [fixture.signing_key] }, fetch);
    }
    const names = targets.map((t) => t.name);
    // One round: every worker in turn, block by block; each round starts with the next worker.
    const load = async (order, blocks) => {
      const answer = await fetch(`${base}/load?targets=${order.join(",")}&block=${block}&blocks=${blocks}&c=${connections}`, {
        headers: { "x-api-key": fixture.api_key },
      });
      if (answer.status !== 200) throw new Error(`the driver answered ${answer.status}: ${await answer.text()}`);
      return answer.json();
    };
    const originStats = async () => (await fetch(`${base}/origin-stats`)).json();
    // Warm-up: each worker's isolate started, its code compiled and optimized.
    await load(names, names.length * blocksEach);
    await originStats();

    const runs = Object.fromEntries(names.map((name) => [name, []]));
    console.error(`== in-process edge bench: ${names.length} workers × ${rounds} rounds × ${blocksEach} blocks of ${block} requests, taking turns block by block, ${connections} at a time${pinned ? ", workerd on CPU 0" : ""}${smoke ? " (smoke)" : ""}`);
    for (let r = 1; r <= rounds; r += 1) {
      const order = names.map((_, i) => names[(i + r - 1) % names.length]);
      const machineBefore = machineCpu();
      const results = await load(order, names.length * blocksEach);
      const machineAfter = machineCpu();
      const steal = machineBefore && machineAfter && machineAfter[0] > machineBefore[0] ? round((100 * (machineAfter[1] - machineBefore[1])) / (machineAfter[0] - machineBefore[0]), 1) : null;
      const trouble = verify(targets, results, await originStats());
      problems.push(...trouble.map((p) => `round ${r}: ${p}`));
      for (const name of names) {
        const blocks = results[name].blocks.map((ms) => (1000 * ms) / block);
        runs[name].push({ round: r, us: round(median(blocks), 1), blocks, steal_pct: steal });
      }
      console.error(`  round ${r}: ${names.map((name) => `${name} ${runs[name].at(-1).us} µs`).join(", ")}; steal ${steal}%${trouble.length ? `  PROBLEM: ${trouble.join("; ")}` : ""}`);
    }
    const summary = summarize(runs, { rounds, block, blocks: blocksEach, connections, pinned, smoke });
    if (env.INPROC_JSON) (await import("node:fs")).writeFileSync(env.INPROC_JSON, `${JSON.stringify(summary, null, 2)}\n`);
    process.stdout.write(`${report(summary)}\n\`\`\`json\n${JSON.stringify(summary, null, 2)}\n\`\`\`\n`);
  } finally {
    await mf.dispose();
  }
  if (problems.length) {
    console.error(`in-process edge bench: ${problems.length} problem(s):\n  ${problems.join("\n  ")}`);
    process.exitCode = 1;
  }
}

// Whether a round measured what it claims: every answer a 200, every request at the origin, a token on
// every request from a worker that sends one, and no X-API-Key but from the pass-through.
function verify(targets, results, seen) {
  const problems = [];
  let requests = 0;
  let tokens = 0;
  let keys = 0;
  for (const target of targets) {
    const result = results[target.name];
    if (Object.keys(result.statuses).some((s) => s !== "200")) problems.push(`${target.name}: statuses ${JSON.stringify(result.statuses)}`);
    requests += result.requests;
    if (target.expect === "none") keys += result.requests;
    else tokens += result.requests;
  }
  if (seen.requests !== requests) problems.push(`the origin saw ${seen.requests} of ${requests} requests`);
  if (seen.bearer !== tokens) problems.push(`${seen.bearer} requests carried a token, not ${tokens}`);
  if (seen.keys !== keys) problems.push(`${seen.keys} requests reached the origin with an X-API-Key, not ${keys}`);
  return problems;
}

function median(values) {
  const sorted = values.filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// Per worker: the median of its rounds, and of each round's difference from the pass-through (what it
// adds), with the range; with EDGE_BENCH_COMPARE, the same for keygate against keygate-compare.
function summarize(runs, settings) {
  const against = (name, baseline) => {
    const base = runs[baseline];
    if (!base || name === baseline) return undefined;
    const added = runs[name].map((e) => e.us - base.find((b) => b.round === e.round).us);
    return { median: round(median(added), 1), range: [round(Math.min(...added), 1), round(Math.max(...added), 1)], fewer: added.filter((a) => a < 0).length };
  };
  const workers = {};
  for (const [name, entries] of Object.entries(runs)) {
    workers[name] = {
      // The median block over every round, and the median of the rounds' medians.
      us: round(median(entries.flatMap((e) => e.blocks)), 1),
      us_rounds: round(median(entries.map((e) => e.us)), 1),
      over_passthrough: against(name, "passthrough"),
      ...(name === "keygate" ? { over_compare: against(name, "keygate-compare") } : {}),
      rounds: entries.map(({ blocks: _blocks, ...entry }) => entry),
    };
  }
  const steal = runs[Object.keys(runs)[0]].map((e) => e.steal_pct ?? 0);
  return { settings: { ...settings, max_steal_pct: Math.max(...steal) }, workers };
}

function report({ settings, workers }) {
  const adds = (a) => (a ? `${a.median} (${a.range[0]} to ${a.range[1]})` : "–");
  const lines = [
    `In-process edge bench (${settings.rounds} rounds; in each, ${settings.blocks} blocks of ${settings.block} requests per worker, the workers taking turns block by block; ${settings.connections} at a time${settings.pinned ? "; workerd on CPU 0" : ""}; host steal up to ${settings.max_steal_pct}%${settings.smoke ? "; smoke: not a measurement" : ""}). One workerd holds a driver, the workers and an origin; nothing crosses the network. Time per request: the median block of every round, and of each round's median block; "adds" is the worker's median block minus the pass-through's in the same round (median of the rounds, range).`,
    "",
    "| worker | µs/request (median block) | median of the rounds' medians | adds over the pass-through |",
    "|---|---|---|---|",
  ];
  for (const [name, w] of Object.entries(workers)) lines.push(`| ${name} | ${w.us} | ${w.us_rounds} | ${adds(w.over_passthrough)} |`);
  const compare = workers.keygate?.over_compare;
  if (compare) {
    lines.push("", `keygate against keygate-compare, round by round: ${compare.median} µs a request (${compare.range[0]} to ${compare.range[1]}); cheaper in ${compare.fewer} of ${settings.rounds} rounds.`);
  }
  return lines.join("\n");
}

await main().catch((error) => {
  console.error(`in-process edge bench: ${error.stack ?? error}`);
  process.exitCode = 1;
});
process.exit();
