// A real GraphQL origin for the end-to-end tests: graphql-yoga over HTTP at /graphql (POST and GET,
// batching, Apollo persisted queries), and WebSockets on the same path speaking graphql-transport-ws
// (graphql-ws) or the legacy graphql-ws subprotocol (subscriptions-transport-ws). It records what
// reached it so a test can compare that with what the client sent through the edge.
//
//   node origin.mjs <port> [--legacy-keepalive-ms N]
//
// Listens on 127.0.0.1:<port> (0 picks a free one) and prints `listening <port>` once it accepts
// connections. Runs from the folder scripts/graphql-node.sh installs, whose node_modules it imports.
//
//   GET  /_origin/log    {"upgrades":[{protocol,url,headers}], "inits":[payload], "operations":
//                        [{transport,protocol,type,name}], "counter":n, "closes":[{protocol,code,reason}],
//                        "completes":[{protocol,id}] (operations the client ended: complete, legacy stop)}
//   POST /_origin/reset  forgets the log, sets the counter to 0 and empties the APQ store
//   POST /_origin/close-sockets?code=N&reason=R   closes every open WebSocket with that code

import { createServer } from 'node:http';
import { execute, getOperationAST, parse, subscribe, validate } from 'graphql';
import { createSchema, createYoga } from 'graphql-yoga';
import { createInMemoryAPQStore, useAPQ } from '@graphql-yoga/plugin-apq';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import { SubscriptionServer } from 'subscriptions-transport-ws';

const TRANSPORT_WS = 'graphql-transport-ws';
const LEGACY_WS = 'graphql-ws';

const args = process.argv.slice(2);
const port = Number(args[0]);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node origin.mjs <port> [--legacy-keepalive-ms N]');
  process.exit(2);
}
const keepAliveAt = args.indexOf('--legacy-keepalive-ms');
// subscriptions-transport-ws sends `ka` after the ack and then every N ms; off unless asked for.
const legacyKeepAliveMs = keepAliveAt >= 0 ? Number(args[keepAliveAt + 1]) : 0;

let counter = 0;
let log = freshLog();
function freshLog() {
  return { upgrades: [], inits: [], operations: [], closes: [], completes: [] };
}

// Yoga's default store forgets a query after 36 s, shorter than a slow test run.
const apqStore = createInMemoryAPQStore({ max: 10_000, ttl: 3_600_000 });

const schema = createSchema({
  typeDefs: /* GraphQL */ `
    type Query {
      hello: String!
      counter: Int!
    }
    type Mutation {
      "Adds one to a counter shared by every transport; returns the new value."
      bump: Int!
    }
    type Subscription {
      "1..count, the first at once and then one every intervalMs (0: as fast as the event loop turns)."
      ticks(count: Int! = 1000000, intervalMs: Int! = 100): Int!
    }
  `,
  resolvers: {
    Query: { hello: () => 'world', counter: () => counter },
    Mutation: { bump: () => ++counter },
    Subscription: {
      ticks: { subscribe: (_, { count, intervalMs }) => ticks(count, intervalMs), resolve: (n) => n },
    },
  },
});

// An async iterator of 1..count that stops at once when the subscriber goes away, even mid-wait
// (an async generator would only see `return()` after its pending timer fired).
function ticks(count, intervalMs) {
  let sent = 0;
  let stopped = false;
  let wake = null;
  let timer = null;
  const wait = () =>
    new Promise((resolve) => {
      wake = resolve;
      timer = intervalMs > 0 ? setTimeout(resolve, intervalMs) : setImmediate(resolve);
    });
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    clearImmediate(timer);
    wake?.();
  };
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next() {
      if (!stopped && sent > 0 && sent < count) await wait();
      if (stopped || sent >= count) return { done: true, value: undefined };
      return { done: false, value: ++sent };
    },
    async return() {
      stop();
      return { done: true, value: undefined };
    },
    async throw(error) {
      stop();
      throw error;
    },
  };
}

function record(transport, protocol, args) {
  const operation = getOperationAST(args.document, args.operationName);
  log.operations.push({
    transport,
    protocol,
    type: operation?.operation ?? null,
    // The executed operation's own name, so a named operation sent without operationName counts too.
    name: args.operationName ?? operation?.name?.value ?? null,
  });
}

// Records an execution over a WebSocket, then runs it with plain graphql-js on the shared schema.
function recorded(protocol, run) {
  return (args) => {
    record('ws', protocol, args);
    return run(args);
  };
}

const yoga = createYoga({
  schema,
  graphqlEndpoint: '/graphql',
  batching: true,
  graphiql: false,
  landingPage: false,
  // Warnings and errors go to stderr; stdout carries only the `listening` line.
  logging: 'warn',
  plugins: [
    useAPQ({ store: apqStore }),
    {
      onExecute: ({ args }) => record('http', null, args),
      onSubscribe: ({ args }) => record('http', null, args),
    },
  ],
});

const sockets = new Set();

const transportWss = new WebSocketServer({ noServer: true });
// useServer replaces this server's handleProtocols with graphql-ws's own.
useServer(
  {
    schema,
    execute: recorded(TRANSPORT_WS, execute),
    subscribe: recorded(TRANSPORT_WS, subscribe),
    onConnect: (ctx) => {
      log.inits.push(ctx.connectionParams ?? null);
    },
    // A `complete` the client sent (an unsubscribe), by operation id.
    onComplete: (_ctx, id) => {
      log.completes.push({ protocol: TRANSPORT_WS, id });
    },
    // Without this a query that does not parse escapes graphql-ws's message handler and closes the
    // socket with 4500; as the graphql-ws recipes do, answer it with an `error` message instead.
    onSubscribe: (_ctx, _id, payload) => {
      let document;
      try {
        document = parse(payload.query);
      } catch (error) {
        return [error];
      }
      const errors = validate(schema, document);
      if (errors.length > 0) return errors;
      return { schema, document, operationName: payload.operationName, variableValues: payload.variables };
    },
  },
  transportWss,
);

const legacyWss = new WebSocketServer({
  noServer: true,
  handleProtocols: (offered) => (offered.has(LEGACY_WS) ? LEGACY_WS : false),
});
new SubscriptionServer(
  {
    schema,
    execute: recorded(LEGACY_WS, execute),
    subscribe: recorded(LEGACY_WS, subscribe),
    keepAlive: legacyKeepAliveMs,
    onConnect: (payload) => {
      log.inits.push(payload ?? null);
      return true;
    },
    // A `stop` the client sent, by operation id.
    onOperationComplete: (_socket, id) => {
      log.completes.push({ protocol: LEGACY_WS, id });
    },
  },
  legacyWss,
);

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://origin');
  if (url.pathname === '/_origin/log' && req.method === 'GET') {
    return json(res, 200, { ...log, counter });
  }
  if (url.pathname === '/_origin/reset' && req.method === 'POST') {
    log = freshLog();
    counter = 0;
    apqStore.clear();
    return json(res, 200, { ok: true });
  }
  if (url.pathname === '/_origin/close-sockets' && req.method === 'POST') {
    const code = Number(url.searchParams.get('code') ?? 1000);
    const reason = url.searchParams.get('reason') ?? '';
    const closed = sockets.size;
    for (const socket of sockets) socket.close(code, reason);
    return json(res, 200, { closed });
  }
  return yoga(req, res);
});

server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://origin').pathname !== '/graphql') {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
  // The current protocol wins when a client offers both. With neither, graphql-ws accepts the
  // upgrade and then closes with 4406, as a real graphql-ws server does.
  const protocol = offered.includes(TRANSPORT_WS) ? TRANSPORT_WS : offered.includes(LEGACY_WS) ? LEGACY_WS : null;
  log.upgrades.push({ protocol, url: req.url, headers: { ...req.headers } });
  const wss = protocol === LEGACY_WS ? legacyWss : transportWss;
  wss.handleUpgrade(req, socket, head, (ws) => {
    sockets.add(ws);
    // The code is the one the peer sent in its close frame (1005: none; 1006: no close frame at all).
    ws.on('close', (code, reason) => {
      sockets.delete(ws);
      log.closes.push({ protocol, code, reason: reason.toString() });
    });
    wss.emit('connection', ws, req);
  });
});

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  for (const socket of sockets) socket.close(1001, 'Going away');
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  // Whatever has not closed by then (a peer that never answers the close frame) is cut.
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
