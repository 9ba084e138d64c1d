// The memory one worker in workerd keeps, read through the runtime's inspector (the Chrome DevTools
// protocol): V8's heap after a full garbage collection, and the size of every WebAssembly memory (which
// only grows: its size is the most the worker's Rust code has ever held at once). Prints one line of
// JSON, `{"heap": bytes, "wasm": bytes}`. The soak test runs it to tell memory the worker keeps from
// memory the runtime has not given back.
//
//   node tests/heap-usage.mjs <inspector host:port> <target id, e.g. core:user:keygate-edge>
//
// `KEYGATE_NODE_MODULES` (from scripts/tools.sh) is where `ws` is: wrangler installs it.

import { createRequire } from "node:module";

const [address, target] = process.argv.slice(2);
const require = createRequire(`${process.env.KEYGATE_NODE_MODULES}/`);
const WebSocket = require("ws");

const fail = (why) => {
  console.error(`heap-usage: ${why}`);
  process.exit(1);
};
setTimeout(() => fail("no answer within 10 s"), 10_000).unref();

const socket = new WebSocket(`ws://${address}/${target}`);
const pending = new Map();
let next = 0;
let context;
const call = (method, params = {}) =>
  new Promise((resolve, reject) => {
    next += 1;
    pending.set(next, { resolve, reject });
    socket.send(JSON.stringify({ id: next, method, params }));
  });

socket.on("message", (data) => {
  const message = JSON.parse(data);
  if (message.method === "Runtime.executionContextCreated") context = message.params.context.id;
  const waiting = pending.get(message.id);
  if (!waiting) return;
  pending.delete(message.id);
  if (message.error) waiting.reject(new Error(JSON.stringify(message.error)));
  else waiting.resolve(message.result);
});
socket.on("error", (error) => fail(error.message));
socket.on("open", async () => {
  try {
    // The collection finishes when the isolate next runs: the caller keeps requests coming.
    await call("HeapProfiler.collectGarbage");
    const usage = await call("Runtime.getHeapUsage");
    // Every WebAssembly.Memory in the isolate, found by its prototype.
    await call("Runtime.enable");
    const prototype = await call("Runtime.evaluate", { expression: "WebAssembly.Memory.prototype", contextId: context });
    const memories = await call("Runtime.queryObjects", { prototypeObjectId: prototype.result.objectId });
    const sizes = await call("Runtime.callFunctionOn", {
      objectId: memories.objects.objectId,
      functionDeclaration: "function () { return this.map((memory) => memory.buffer.byteLength); }",
      returnByValue: true,
    });
    const wasm = sizes.result.value.reduce((sum, size) => sum + size, 0);
    console.log(JSON.stringify({ heap: usage.usedSize + usage.embedderHeapUsedSize, wasm }));
    socket.close();
    process.exit(0);
  } catch (error) {
    fail(error.message);
  }
});
