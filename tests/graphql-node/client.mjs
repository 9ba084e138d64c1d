// Real GraphQL WebSocket clients for the end-to-end tests, one scenario per run:
//
//   node client.mjs '<json spec>'
//
// spec: {"url": "ws://...", "protocol": "graphql-transport-ws" | "graphql-ws",
//        "headers": {...}?, "connectionParams": {...}?, "operations": [{"id", "query", "variables"?,
//        "operationName"?, "take"?}], "hold": bool?, "timeoutMs": 10000?,
//        "keepAliveMs": N? (graphql-transport-ws: send a ping every N ms)}
//
// graphql-transport-ws runs the graphql-ws client (createClient), graphql-ws (the legacy Apollo
// protocol) runs subscriptions-transport-ws's SubscriptionClient; both over `ws` with `headers` on
// the upgrade request. Operations start one after another once the connection is acknowledged: the
// next starts when the previous one has its first result, its `take` results (then the client
// completes it), an error or a complete. When every operation has ended the client closes the
// socket itself (unless `hold`, which waits for the server to close it or the timeout).
//
// Prints one JSON object per line as things happen, each with `t` (ms since start):
//   {"event":"opened"}                                    the socket is open
//   {"event":"rejected","status":401,"headers":{...}}     the upgrade was answered without a switch
//   {"event":"socket_error","message":"..."}              ws's error (refused, reset, bad handshake)
//   {"event":"connected","payload":...?}                  connection_ack
//   {"event":"connection_error","payload":...}            legacy connection_error
//   {"event":"ka"}                                        legacy keep-alive
//   {"event":"ping"|"pong","received":bool}               graphql-transport-ws ping/pong, sent or received
//   {"event":"unexpected_message","data":"..."}           legacy: not JSON or of no known type
//   {"event":"next","id":"a","data":{...},"errors":[...]?}
//   {"event":"error","id":"a","errors":[...]}             an error message for an operation
//   {"event":"complete","id":"a","by":"server"|"client"}  by client: after `take` results
//   {"event":"closed","code":4403,"reason":"..."}         the close code the peer sent
//   {"event":"done"}                                      everything ended, the client closed normally
//   {"event":"timeout"}                                   timeoutMs passed first
// then exits 0. It exits 2 only for a bad spec: a refusal or a close is a result, not a failure.

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { SubscriptionClient } from 'subscriptions-transport-ws';

const started = performance.now();

function report(event, fields = {}) {
  const t = Math.round((performance.now() - started) * 100) / 100;
  // Synchronous on a pipe or a file on Linux, so nothing is lost when the process exits.
  process.stdout.write(JSON.stringify({ event, ...fields, t }) + '\n');
}

function usage(message) {
  process.stderr.write(`client.mjs: ${message}\n`);
  process.exit(2);
}

let spec;
try {
  spec = JSON.parse(process.argv[2] ?? '');
} catch (error) {
  usage(`the argument is not a JSON spec: ${error.message}`);
}
if (typeof spec?.url !== 'string') usage('spec.url must be a ws:// URL');
if (!['graphql-transport-ws', 'graphql-ws'].includes(spec.protocol)) usage('spec.protocol: graphql-transport-ws or graphql-ws');
const operations = spec.operations ?? [];
if (!Array.isArray(operations) || operations.some((op) => typeof op?.id !== 'string' || typeof op.query !== 'string')) {
  usage('spec.operations: [{"id": string, "query": string, ...}]');
}
const timeoutMs = spec.timeoutMs ?? 10_000;
const headers = spec.headers ?? {};

setTimeout(() => {
  report('timeout');
  process.exit(0);
}, timeoutMs);

// `ws` with the spec's headers on the upgrade request, reporting a refused upgrade.
class HeaderWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { headers });
    this.on('error', (error) => report('socket_error', { message: error.message }));
  }
  emit(name, ...args) {
    if (name === 'unexpected-response') {
      const [, response] = args;
      report('rejected', { status: response.statusCode, headers: response.headers });
      // Answering "no listener" makes ws abort the handshake as usual: an error, then close 1006.
      return false;
    }
    return super.emit(name, ...args);
  }
}

// Per operation: ended (no more events expected) and, while the runner waits for it, `settle`.
const state = new Map(operations.map((op) => [op.id, { ended: false, count: 0, settle: null }]));
let allStarted = false;
let socketClosed = false;
let closingByUs = false;
let closeClient = () => {};

function settled(id) {
  const s = state.get(id);
  s.settle?.();
  s.settle = null;
}
function ended(id) {
  state.get(id).ended = true;
  settled(id);
  closeWhenIdle();
}
function closeWhenIdle() {
  const idle = allStarted && [...state.values()].every((s) => s.ended);
  if (idle && !socketClosed && !closingByUs && !spec.hold) {
    closingByUs = true;
    closeClient();
  }
}

// Runs the operations in order: `start(op, sink)` sends one and returns what stops it.
async function runOperations(start) {
  for (const op of operations) {
    if (socketClosed) return;
    const s = state.get(op.id);
    await new Promise((resolve) => {
      s.settle = resolve;
      const stop = start(op, {
        next: (payload) => {
          if (s.ended || socketClosed) return;
          s.count++;
          report('next', { id: op.id, data: payload.data, ...(payload.errors ? { errors: payload.errors } : {}) });
          if (op.take != null && s.count >= op.take) {
            s.ended = true;
            stop();
            report('complete', { id: op.id, by: 'client' });
            ended(op.id);
          } else if (op.take == null) {
            // Streams on; the next operation may start.
            settled(op.id);
          }
        },
        error: (errors) => {
          if (s.ended || socketClosed) return;
          report('error', { id: op.id, errors: Array.isArray(errors) ? errors : [errors] });
          ended(op.id);
        },
        complete: () => {
          if (s.ended || socketClosed) return;
          report('complete', { id: op.id, by: 'server' });
          ended(op.id);
        },
      });
    });
  }
  allStarted = true;
  closeWhenIdle();
}

// Once the socket is closed the libraries may reject what was pending on it; before, a rejection
// nobody handles is a bug here (node's default: print it, exit 1).
process.on('unhandledRejection', (reason) => {
  if (socketClosed) return;
  console.error('client.mjs: unhandled rejection:', reason);
  process.exit(1);
});

function socketClosedWith(code, reason) {
  if (socketClosed) return;
  socketClosed = true;
  report('closed', { code, reason: String(reason) });
  for (const s of state.values()) s.settle?.();
  if (closingByUs) report('done');
  // Whatever the libraries do after the close (retry, reject pending operations) is not the scenario's.
  setImmediate(() => process.exit(0));
}

if (spec.protocol === 'graphql-transport-ws') {
  const client = createClient({
    url: spec.url,
    webSocketImpl: HeaderWebSocket,
    connectionParams: spec.connectionParams,
    // keepAliveMs: send a `ping` that often; `ping` and `pong` messages are reported either way.
    keepAlive: spec.keepAliveMs ?? 0,
    lazy: false,
    retryAttempts: 0,
    // Reported through `closed`; the default prints it to stderr.
    onNonLazyError: () => {},
    on: {
      opened: () => report('opened'),
      ping: (received) => report('ping', { received }),
      pong: (received) => report('pong', { received }),
      connected: (_socket, payload) => {
        report('connected', payload === undefined ? {} : { payload });
        runOperations(
          (op, sink) =>
            client.subscribe(
              { query: op.query, variables: op.variables, operationName: op.operationName },
              {
                next: sink.next,
                // A close (a CloseEvent, not GraphQL errors) ends every operation: reported as `closed`.
                error: (error) => (Array.isArray(error) ? sink.error(error) : undefined),
                complete: sink.complete,
              },
            ),
        );
      },
      closed: (event) => {
        // graphql-ws reconnects after a 1000 close while operations run, whatever retryAttempts says:
        // disposing first makes it give up. (It rejects when the socket never got to connection_ack.)
        client.dispose().catch(() => {});
        socketClosedWith(event.code, event.reason);
      },
    },
  });
  closeClient = () => client.dispose().catch(() => {});
} else {
  const specIds = new Map(); // the library's operation id → the spec's
  const sinks = new Map(); // spec id → sink
  let startingId = null;
  const client = new SubscriptionClient(
    spec.url,
    {
      connectionParams: spec.connectionParams,
      reconnect: false,
      lazy: false,
      // How long the socket may take to open before the client gives up (default 1 s).
      minTimeout: timeoutMs,
      timeout: timeoutMs,
    },
    HeaderWebSocket,
    'graphql-ws',
  );
  // The library hides the close code and keeps only the first of an error's messages: watch the
  // socket and the raw messages, and leave the protocol to the library.
  closeClient = () => client.close();
  const socket = client.client;
  socket.on('open', () => report('opened'));
  socket.on('close', (code, reason) => socketClosedWith(code, reason));
  const executeOperation = client.executeOperation;
  client.executeOperation = function (options, handler) {
    const opId = executeOperation.call(this, options, handler);
    specIds.set(opId, startingId);
    return opId;
  };
  const processReceivedData = client.processReceivedData;
  client.processReceivedData = function (data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      message = {};
    }
    if (!['connection_ack', 'connection_error', 'ka', 'data', 'error', 'complete'].includes(message?.type)) {
      // The library would throw out of the socket's message handler and end the process.
      report('unexpected_message', { data: String(data) });
      return;
    }
    const sink = sinks.get(specIds.get(message.id));
    switch (message.type) {
      case 'connection_ack':
        report('connected', message.payload === undefined ? {} : { payload: message.payload });
        queueMicrotask(() =>
          runOperations(
            (op, sink) => {
              sinks.set(op.id, sink);
              startingId = op.id;
              const subscription = client
                .request({ query: op.query, variables: op.variables, operationName: op.operationName })
                .subscribe({ next() {}, error() {}, complete() {} });
              startingId = null;
              return () => subscription.unsubscribe();
            },
          ),
        );
        break;
      case 'connection_error':
        report('connection_error', { payload: message.payload });
        break;
      case 'ka':
        report('ka');
        break;
      case 'data':
        sink?.next(message.payload ?? {});
        break;
      case 'error':
        sink?.error(message.payload);
        break;
      case 'complete':
        sink?.complete();
        break;
    }
    return processReceivedData.call(this, data);
  };
}
