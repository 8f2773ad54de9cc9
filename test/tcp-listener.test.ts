// The client TCP listener against real sockets on loopback: pipelining and
// half-close, the slow-loris defences (read timeout, idle that partial bytes
// do not extend, eviction of the idlest connection at the cap), the cap per
// client address (clients bound to 127.0.0.2, 127.0.0.3, and in the agent on
// both UDP backends) and the bound on unsent answers for a client that never
// reads (kernel send queue read from /proc/net/tcp, Node's share capped).
import t, { type Test } from 'tap';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { silentLogger } from '../src/log.js';
import type { ClientChannel, ClientPeer, QueryHandler } from '../src/server/listener.js';
import { TcpListener, type TcpListenerOptions } from '../src/server/tcp-listener.js';
import { TcpSlots } from '../src/server/tcp-slots.js';
import { UnsentRoom, type UnsentRoomHolder } from '../src/server/tcp-unsent.js';
import { fdOf, loadSocketOptions } from '../src/sys/socket-options.js';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { startAgent } from './helpers/agent.js';
import { buildQuery, sleep } from './helpers/dns-client.js';

const HOST = '127.0.0.1';
/** A query whose byte 2 is HOLD is kept by the handler until the test releases it (a slow upstream). */
const HOLD = 0xff;

/** Answers every query at once (inside handle) with `answerBytes` bytes that start with the query's id. */
class FakeHandler implements QueryHandler {
  readonly held: { channel: ClientChannel; peer: ClientPeer; id: number }[] = [];
  queries = 0;
  constructor(readonly answerBytes = 64) {}

  handle(msg: Buffer, channel: ClientChannel, peer: ClientPeer): void {
    this.queries++;
    const id = msg.readUInt16BE(0);
    if (msg[2] === HOLD) {
      this.held.push({ channel, peer, id });
      return;
    }
    channel.send(this.#answer(id), peer);
  }

  release(): void {
    for (const h of this.held.splice(0)) h.channel.send(this.#answer(h.id), h.peer);
  }

  #answer(id: number): Buffer {
    const a = Buffer.alloc(this.answerBytes, 0x61);
    a.writeUInt16BE(id, 0);
    return a;
  }
}

function query(id: number, hold = false): Buffer {
  const q = Buffer.alloc(12);
  q.writeUInt16BE(id, 0);
  if (hold) q[2] = HOLD;
  return frame(q);
}

/** A test client: collects answer ids, notices the server closing. */
class Client {
  readonly socket: net.Socket;
  readonly answers: number[] = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    const dec = new FrameDecoder((f) => this.answers.push(f.readUInt16BE(0)));
    socket.on('data', (c: Buffer) => dec.push(c));
    socket.on('error', () => {}); // resets are expected in these tests
    socket.on('close', () => {
      this.closed = true;
    });
  }

  /** `host` the listener's address (default HOST), `from` a loopback source address to connect from. */
  static connect(t: Test, port: number, opts: { read?: boolean; host?: string; from?: string } = {}): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host: opts.host ?? HOST, ...(opts.from !== undefined ? { localAddress: opts.from } : {}) });
      const c = new Client(s);
      t.teardown(() => {
        s.destroy();
      });
      // A client that never reads: nothing leaves its receive buffer, so its window closes.
      if (opts.read === false) s.pause();
      s.once('connect', () => resolve(c));
      s.once('error', reject);
    });
  }

  get localPort(): number {
    return this.socket.localPort ?? 0;
  }
}

/** A newcomer that sends `q` and must be closed unanswered. */
async function turnedAway(t: Test, port: number, q: Buffer, what: string): Promise<void> {
  const c = await Client.connect(t, port);
  c.socket.write(q);
  t.ok(await until(() => c.closed), what);
  t.same(c.answers, [], 'and not served');
}

/** Polls `pred` every 10 ms, at most `boundMs`; the bound only keeps a broken build from hanging. */
async function until(pred: () => boolean, boundMs = 5000): Promise<boolean> {
  for (let waited = 0; waited < boundMs; waited += 10) {
    if (pred()) return true;
    await sleep(10);
  }
  return pred();
}

async function startListener(t: Test, handler: QueryHandler, opts: Partial<TcpListenerOptions> = {}, host = HOST): Promise<TcpListener> {
  const l = new TcpListener({ host, port: 0 }, handler, silentLogger, {
    idleTimeoutMs: 10_000,
    maxConnections: 16,
    maxQueriesPerConnection: 8,
    ...opts,
  });
  await l.start();
  t.teardown(() => l.close());
  return l;
}

/** The server side of a loopback connection from /proc/net/tcp (this netns): state and unacknowledged + unsent bytes. */
function serverSide(serverPort: number, clientPort: number): { state: number; txQueue: number; rxQueue: number } | null {
  const hexPort = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    if (f[1]?.split(':')[1] !== hexPort(serverPort) || f[2]?.split(':')[1] !== hexPort(clientPort)) continue;
    return { state: parseInt(f[3] ?? '0', 16), txQueue: parseInt(f[4]?.split(':')[0] ?? '0', 16), rxQueue: parseInt(f[4]?.split(':')[1] ?? '0', 16) };
  }
  return null;
}

// ---------------------------------------------------------------- RFC 7766 basics

t.test('pipelined queries are all answered; a client that sends FIN still gets its answers', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { maxQueriesPerConnection: 2 });
  const c = await Client.connect(t, l.port);
  // Five queries in one write with an in-flight cap of 2: the rest wait in the backlog, none is dropped.
  c.socket.write(Buffer.concat([1, 2, 3, 4, 5].map((id) => query(id, id === 2))));
  t.ok(await until(() => c.answers.length === 4), 'the four answered at once arrive');
  h.release();
  t.ok(await until(() => c.answers.length === 5), 'the held one arrives later, out of order');
  t.same([...c.answers].sort(), [1, 2, 3, 4, 5]);

  const d = await Client.connect(t, l.port);
  d.socket.end(Buffer.concat([query(7, true), query(8)]));
  t.ok(await until(() => d.answers.length === 1), 'answer to the prompt query after FIN');
  h.release();
  t.ok(await until(() => d.closed), 'closed once the held answer is written');
  t.same(d.answers, [8, 7]);
});

t.test('frames past the in-flight cap cost what their bytes cost: 60 KB of empty frames on a busy connection is not 30,000 objects', async (t) => {
  // A pod keeps each connection at its in-flight cap (queries for a name whose servers never answer, coalesced:
  // nearly free), then sends one read's worth of 2-byte empty frames. At 1,024 connections what the agent
  // holds for them must stay near what was sent (60 MB), not 50 times that.
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const h = new FakeHandler();
  const conns = 16;
  const l = await startListener(t, h, { maxConnections: conns, maxQueriesPerConnection: 1, readTimeoutMs: 60_000, idleTimeoutMs: 60_000 });
  gc();
  const before = process.memoryUsage();
  const clients: Client[] = [];
  for (let i = 0; i < conns; i++) {
    const c = await Client.connect(t, l.port);
    c.socket.write(Buffer.concat([query(i, true), Buffer.alloc(60_000)]));
    clients.push(c);
  }
  t.ok(await until(() => h.held.length === conns), 'every connection is at its cap, its query held');
  // Whatever the server will take off the kernel queues, it has taken (or it stopped reading: then the bytes wait there).
  await until(() => clients.every((c) => (serverSide(l.port, c.localPort)?.rxQueue ?? 0) === 0), 3000);
  gc();
  const after = process.memoryUsage();
  const perConn = (after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers) / conns;
  t.ok(perConn < 512 * 1024, `held per connection: ${Math.round(perConn / 1024)} KiB for 60 KB sent (bound 512 KiB)`);
  t.equal(l.connections, conns);
});

// ---------------------------------------------------------------- defect 8: slow-loris

t.test('slow-loris: a message not completed within the read timeout of its first byte is cut', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { readTimeoutMs: 300, idleTimeoutMs: 5_000 });
  const c = await Client.connect(t, l.port);
  // Announce a 256-byte message, then one byte every 50 ms: every byte is activity, no message ever completes.
  c.socket.write(Buffer.from([0x01, 0x00]));
  let sent = 0;
  for (; sent < 80 && !c.closed; sent++) {
    c.socket.write(Buffer.from([0x00]));
    await sleep(50);
  }
  t.ok(c.closed, `closed while trickling (after ${sent} bytes; 80 bytes take 4 s, well past the 300 ms read timeout)`);
  t.equal(h.queries, 0, 'no message was ever complete');
  t.equal(l.counters.get('closedReadTimeout'), 1, 'counted as read_timeout');
  t.equal(l.connections, 0);
});

t.test('slow-loris: partial bytes do not extend the idle timeout', async (t) => {
  const h = new FakeHandler();
  // The read timeout is out of the way: only idleness can close this connection.
  const l = await startListener(t, h, { readTimeoutMs: 60_000, idleTimeoutMs: 300 });
  const c = await Client.connect(t, l.port);
  c.socket.write(query(1));
  t.ok(await until(() => c.answers.length === 1), 'a complete query is answered');
  c.socket.write(Buffer.from([0x01, 0x00]));
  let sent = 0;
  for (; sent < 80 && !c.closed; sent++) {
    c.socket.write(Buffer.from([0x00]));
    await sleep(50);
  }
  t.ok(c.closed, `closed as idle while trickling (after ${sent} bytes, 4 s would be 13x the idle timeout)`);
  t.equal(l.counters.get('closedIdle'), 1, 'counted as idle');
  t.equal(l.counters.get('closedReadTimeout'), 0);
});

t.test('the read timeout does not run while reading is paused at the in-flight cap', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { readTimeoutMs: 200, maxQueriesPerConnection: 1 });
  const c = await Client.connect(t, l.port);
  const q3 = query(3);
  // q1 is held (the cap is 1), q2 waits in the backlog so reading pauses, and q3 is split: its tail sits in our
  // receive queue, unread because of us, not because the client is slow.
  c.socket.write(Buffer.concat([query(1, true), query(2), q3.subarray(0, 5)]));
  t.ok(await until(() => h.held.length === 1), 'q1 taken');
  c.socket.write(q3.subarray(5));
  await sleep(1000); // five read timeouts
  t.notOk(c.closed, 'not cut while we were the ones not reading');
  h.release();
  t.ok(await until(() => c.answers.length === 3), 'all three answered once the cap frees');
  t.same(c.answers, [1, 2, 3]);
  t.equal(l.counters.get('closedReadTimeout'), 0);
});

t.test('idle never closes a connection with a query in flight', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { idleTimeoutMs: 100 });
  const c = await Client.connect(t, l.port);
  c.socket.write(query(1, true));
  t.ok(await until(() => h.held.length === 1), 'query taken');
  // Ten idle timeouts with the answer owed: a slow upstream must not cost the client its connection.
  await sleep(1000);
  t.notOk(c.closed, 'still open while its answer is owed');
  h.release();
  t.ok(await until(() => c.answers.length === 1), 'the late answer arrives');
  t.ok(await until(() => c.closed), 'then idle closes it');
  t.equal(l.counters.get('closedIdle'), 1);
});

t.test('at the connection cap a new client evicts the idlest connection; refused only when all are busy', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { maxConnections: 3 });
  const a = await Client.connect(t, l.port);
  a.socket.write(query(1));
  t.ok(await until(() => a.answers.length === 1));
  await sleep(100); // a few sweeps, so b's activity is stamped later than a's
  const b = await Client.connect(t, l.port);
  b.socket.write(query(2));
  t.ok(await until(() => b.answers.length === 1));
  const c = await Client.connect(t, l.port);
  c.socket.write(query(3, true));
  t.ok(await until(() => h.held.length === 1 && l.connections === 3), 'three connections, c busy');

  const d = await Client.connect(t, l.port);
  d.socket.write(query(4));
  t.ok(await until(() => d.answers.length === 1), 'the newcomer is served');
  t.ok(await until(() => a.closed), 'the connection idle longest (a) was closed for it');
  t.notOk(b.closed || c.closed || d.closed, 'b, c and d stay');
  t.equal(l.counters.get('closedEvicted'), 1, 'counted as evicted');

  // Now every connection owes an answer: nothing may be evicted, the newcomer is turned away.
  b.socket.write(query(5, true));
  d.socket.write(query(6, true));
  t.ok(await until(() => h.held.length === 3), 'b, c, d all busy');
  await turnedAway(t, l.port, query(7), 'newcomer closed');
  t.equal(l.counters.get('refused'), 1, 'counted as refused');
  t.equal(l.counters.get('closedEvicted'), 1, 'no busy connection was evicted');
  h.release();
  t.ok(await until(() => b.answers.length === 2 && c.answers.length === 1 && d.answers.length === 2), 'busy clients get their answers');
  t.notOk(b.closed || c.closed || d.closed);
  t.equal(l.counters.get('open'), 3, 'gauge of open connections');
});

// ---------------------------------------------------------------- the per-client cap

t.test('per-client cap: at it a client closes its own idlest connection, and is refused only when all of its are busy; others are not touched', async (t) => {
  const h = new FakeHandler();
  const l = await startListener(t, h, { maxConnections: 16, maxConnectionsPerClient: 2 });
  const a1 = await Client.connect(t, l.port, { from: '127.0.0.2' });
  a1.socket.write(query(1, true));
  const a2 = await Client.connect(t, l.port, { from: '127.0.0.2' });
  a2.socket.write(query(2, true));
  t.ok(await until(() => h.held.length === 2), 'both of 127.0.0.2\'s connections busy');
  const a3 = await Client.connect(t, l.port, { from: '127.0.0.2' });
  a3.socket.write(query(3));
  t.ok(await until(() => a3.closed), 'a third from 127.0.0.2 is closed at once');
  t.same(a3.answers, [], 'and not served');
  t.equal(l.counters.get('refusedClient'), 1, 'counted as refused, reason client_limit');
  t.equal(l.counters.get('refused'), 0, 'not as the listener\'s own cap');
  const b = await Client.connect(t, l.port, { from: '127.0.0.3' });
  b.socket.write(query(4));
  t.ok(await until(() => b.answers.length === 1), 'another address is served');
  h.release();
  t.ok(await until(() => a1.answers.length === 1 && a2.answers.length === 1), 'the busy ones get their answers');
  // Both idle now: a newcomer from the capped address makes room among its own connections, never another client's.
  const a4 = await Client.connect(t, l.port, { from: '127.0.0.2' });
  a4.socket.write(query(5));
  t.ok(await until(() => a4.answers.length === 1), 'the newcomer is served');
  t.ok(await until(() => a1.closed), 'a1 (its idlest, the older on a tie) was closed for it');
  t.notOk(a2.closed || b.closed, 'a2 and the other client stay');
  t.equal(l.counters.get('closedEvicted'), 1, 'counted as evicted');
  t.equal(l.counters.get('refusedClient'), 1, 'nothing more refused');
  t.equal(l.clientAddresses, 2, 'two addresses tracked');
  for (const c of [a2, a4, b]) c.socket.destroy();
  t.ok(await until(() => l.connections === 0 && l.clientAddresses === 0), 'an address is forgotten with its last connection');
});

// ---------------------------------------------------------------- one budget for every listener (tcp-slots.ts)

/** Two listeners on loopback sharing one TcpSlots, as the agent's listen addresses do. */
async function twoListeners(t: Test, h: QueryHandler, maxConnections: number, maxConnectionsPerClient: number): Promise<[TcpListener, TcpListener]> {
  const slots = new TcpSlots({ maxConnections, maxConnectionsPerClient, unsentRoomBytes: 1024 * 1024 });
  return [await startListener(t, h, { slots }), await startListener(t, h, { slots }, '127.0.0.2')];
}

t.test('the connection cap is shared by the listeners: a newcomer on one evicts the idlest on the other, and is refused only when all are busy', async (t) => {
  const h = new FakeHandler();
  const [la, lb] = await twoListeners(t, h, 2, 0);
  const a = await Client.connect(t, la.port);
  a.socket.write(query(1));
  t.ok(await until(() => a.answers.length === 1), 'a answered on the first listener, idle now');
  const b = await Client.connect(t, lb.port, { host: '127.0.0.2' });
  b.socket.write(query(2, true));
  t.ok(await until(() => h.held.length === 1), 'b busy on the second');
  const c = await Client.connect(t, lb.port, { host: '127.0.0.2' });
  c.socket.write(query(3));
  t.ok(await until(() => c.answers.length === 1), 'a newcomer on the second listener is served');
  t.ok(await until(() => a.closed), 'a, idle on the first listener, was closed for it');
  t.equal(la.counters.get('closedEvicted'), 1, 'counted as evicted on a\'s listener');
  t.ok(la.connections === 0 && la.counters.get('open') === 0, 'which let go of it at once (its gauge too)');
  t.equal(lb.connections, 2, 'the second holds b and c');
  c.socket.write(query(4, true));
  t.ok(await until(() => h.held.length === 2), 'b and c busy');
  await turnedAway(t, la.port, query(5), 'a newcomer on the first listener is refused: two open across both, all busy');
  t.equal(la.counters.get('refused'), 1, 'counted as connection_limit on its listener');
  t.equal(lb.counters.get('refused') + lb.counters.get('closedEvicted'), 0, 'nothing refused or evicted on the other');
  h.release();
  t.ok(await until(() => b.answers.length === 1 && c.answers.length === 2), 'the busy ones get their answers');
});

t.test('the per-client cap is shared by the listeners: a client at it on one is refused on the other, or closes its own idlest there; one listener closing leaves the other\'s count', async (t) => {
  const h = new FakeHandler();
  const [la, lb] = await twoListeners(t, h, 16, 1);
  const a1 = await Client.connect(t, la.port, { from: '127.0.0.3' });
  a1.socket.write(query(1, true));
  t.ok(await until(() => h.held.length === 1), '127.0.0.3 busy on the first listener');
  const a2 = await Client.connect(t, lb.port, { host: '127.0.0.2', from: '127.0.0.3' });
  a2.socket.write(query(2));
  t.ok(await until(() => a2.closed), 'its connection to the second listener is refused');
  t.equal(lb.counters.get('refusedClient'), 1, 'counted as client_limit there');
  const other = await Client.connect(t, lb.port, { host: '127.0.0.2', from: '127.0.0.4' });
  other.socket.write(query(3));
  t.ok(await until(() => other.answers.length === 1), 'another address is served');
  h.release();
  t.ok(await until(() => a1.answers.length === 1), 'a1 answered, idle now');
  const a3 = await Client.connect(t, lb.port, { host: '127.0.0.2', from: '127.0.0.3' });
  a3.socket.write(query(4));
  t.ok(await until(() => a3.answers.length === 1), 'a newcomer from 127.0.0.3 on the second listener is served');
  t.ok(await until(() => a1.closed), 'its idle connection on the first was closed for it');
  t.equal(la.counters.get('closedEvicted'), 1, 'counted as evicted on the first');
  t.notOk(other.closed, 'the other client is not touched');
  const onFirst = await Client.connect(t, la.port, { from: '127.0.0.5' });
  t.ok(await until(() => la.connections === 1), 'a third address on the first listener');
  t.equal(lb.clientAddresses, 3, 'three addresses tracked across both');
  await la.close();
  t.ok(await until(() => onFirst.closed), 'the first listener closed with its connection');
  t.equal(lb.clientAddresses, 2, 'the first listener closing forgets its own clients, not the second\'s');
  for (const c of [a3, other]) c.socket.destroy();
  t.ok(await until(() => lb.connections === 0 && lb.clientAddresses === 0), 'an address is forgotten with its last connection');
});

/** One connection busy, one connected with its query not sent yet: a third must be turned away, not take the fresh one's slot. */
async function freshKeepsSlot(t: Test, h: FakeHandler, l: TcpListener, id: number, from?: string): Promise<void> {
  const opts = from === undefined ? {} : { from };
  const busy = await Client.connect(t, l.port, opts);
  busy.socket.write(query(id, true));
  const held = h.held.length;
  t.ok(await until(() => h.held.length === held + 1), 'one connection busy');
  const fresh = await Client.connect(t, l.port, opts);
  t.ok(await until(() => l.connections === 2), 'a second connected, its query not sent yet');
  const third = await Client.connect(t, l.port, opts);
  third.socket.write(query(id + 1));
  t.ok(await until(() => third.closed), 'the third is turned away');
  t.notOk(fresh.closed, 'the fresh connection keeps its slot');
  fresh.socket.write(query(id + 2));
  t.ok(await until(() => fresh.answers.length === 1), 'and its query is answered');
  t.equal(l.counters.get('closedEvicted'), 0, 'nothing evicted');
}

t.test('at either cap a connection that has not sent its first query yet is not closed for a newcomer (a client opening a connection per query, as glibc and Go do for TCP, would lose queries)', async (t) => {
  const h = new FakeHandler();
  const perClient = await startListener(t, h, { maxConnections: 16, maxConnectionsPerClient: 2 });
  await freshKeepsSlot(t, h, perClient, 1, '127.0.0.2');
  t.equal(perClient.counters.get('refusedClient'), 1, 'the newcomer counted as client_limit');
  const listenerCap = await startListener(t, h, { maxConnections: 2, maxConnectionsPerClient: 0 });
  await freshKeepsSlot(t, h, listenerCap, 10);
  t.equal(listenerCap.counters.get('refused'), 1, 'the newcomer counted as connection_limit');
  h.release();
});

t.test('per-client cap: IPv6 clients are capped by address too; 0 turns it off', async (t) => {
  const h = new FakeHandler();
  const l6 = await startListener(t, h, { maxConnectionsPerClient: 1 }, '::1');
  const c1 = await Client.connect(t, l6.port, { host: '::1' });
  c1.socket.write(query(1, true));
  t.ok(await until(() => h.held.length === 1), 'one busy connection from ::1');
  const c2 = await Client.connect(t, l6.port, { host: '::1' });
  t.ok(await until(() => c2.closed), 'a second from ::1 is refused');
  t.equal(l6.counters.get('refusedClient'), 1, 'counted as client_limit');
  h.release();

  const l0 = await startListener(t, h, { maxConnectionsPerClient: 0 });
  const many: Client[] = [];
  for (let i = 0; i < 5; i++) {
    const c = await Client.connect(t, l0.port, { from: '127.0.0.2' });
    c.socket.write(query(10 + i, true));
    many.push(c);
  }
  t.ok(await until(() => h.held.length === 5), 'five busy connections from one address, all admitted');
  t.notOk(many.some((c) => c.closed), 'none closed');
  t.equal(l0.counters.get('refusedClient'), 0, 'nothing refused');
  t.equal(l0.clientAddresses, 0, 'nothing tracked without a cap');
  h.release();
});

for (const io of ['dgram', 'batched'] as const) {
  t.test(`--max-tcp-per-client in the agent (--io ${io}: TCP is served on the main thread either way)`, async (t) => {
    // An upstream that never answers keeps a query in flight, so the connection that asked is busy and cannot make room.
    const silent = await SimDnsServer.start({ handler: staticHandler({}), faults: { dropAll: true } });
    t.teardown(() => silent.close());
    const up = `127.0.0.1:${silent.port}`;
    const a = await startAgent('127.0.21.1', [
      '--upstream-addr', up, '--upstream-nameservers', up, '--timeout', '30s', '--max-tcp-per-client', '1',
      '--io', io, ...(io === 'batched' ? ['--workers', '1'] : []),
    ]);
    t.teardown(a.stop);
    t.equal(a.agent.udpIo, io, `UDP served by ${io}`);
    const tcp = a.agent.listeners.find((l): l is TcpListener => l instanceof TcpListener);
    if (tcp === undefined) throw new Error('no TCP listener');
    const asked = (): number => silent.stats.tcpQueries + silent.stats.udpQueries;
    const busy = await Client.connect(t, a.target.port, { host: a.target.host, from: '127.0.0.2' });
    busy.socket.write(frame(buildQuery('a.default.svc.cluster.local', { id: 1 })));
    t.ok(await until(() => asked() === 1), 'its query waits on the upstream');
    const second = await Client.connect(t, a.target.port, { host: a.target.host, from: '127.0.0.2' });
    second.socket.write(frame(buildQuery('b.default.svc.cluster.local', { id: 2 })));
    t.ok(await until(() => second.closed), 'a second connection from 127.0.0.2 is closed at once');
    t.equal(tcp.counters.get('refusedClient'), 1, 'counted');
    const other = await Client.connect(t, a.target.port, { host: a.target.host, from: '127.0.0.3' });
    other.socket.write(frame(buildQuery('c.default.svc.cluster.local', { id: 3 })));
    t.ok(await until(() => asked() === 2), 'another address is admitted and its query forwarded');
    t.notOk(busy.closed || other.closed, 'both stay open');
  });
}

/** A port free on 127.0.0.1 a moment ago (listeners on other loopback addresses bind it too). */
t.test('--max-tcp-connections and --max-tcp-per-client hold across the agent\'s listen addresses (one budget per process, as memory is)', async (t) => {
  const silent = await SimDnsServer.start({ handler: staticHandler({}), faults: { dropAll: true } });
  t.teardown(() => silent.close());
  const up = `127.0.0.1:${silent.port}`;
  // 127.0.21.3 is this file's alone and the port is below the ephemeral range: no other socket can hold it (a port
  // found free by a TCP listen on 127.0.0.1 could be any UDP client socket's, bound to 0.0.0.0).
  const second = { host: '127.0.21.3', port: 20_000 + (process.pid % 10_000) };
  const a = await startAgent('127.0.21.2', [
    '--listen', `${second.host}:${second.port}`,
    '--upstream-addr', up, '--upstream-nameservers', up, '--timeout', '30s', '--max-tcp-per-client', '1', '--max-tcp-connections', '2',
  ]);
  t.teardown(a.stop);
  const tcp = a.agent.listeners.filter((l): l is TcpListener => l instanceof TcpListener);
  t.equal(tcp.length, 2, 'two TCP listeners');
  const asked = (): number => silent.stats.tcpQueries + silent.stats.udpQueries;
  const at = (target: { host: string; port: number }, from: string, id: number): Promise<Client> =>
    Client.connect(t, target.port, { host: target.host, from }).then((c) => {
      c.socket.write(frame(buildQuery(`q${id}.default.svc.cluster.local`, { id })));
      return c;
    });
  // Busy connections (their queries wait on an upstream that never answers) can make no room.
  const busy = await at(a.target, '127.0.0.2', 1);
  t.ok(await until(() => asked() === 1), 'one busy connection from 127.0.0.2 on the first address');
  const sameClient = await at(second, '127.0.0.2', 2);
  t.ok(await until(() => sameClient.closed), 'a second from 127.0.0.2, on the other address, is refused: the per-client cap is the agent\'s');
  const other = await at(second, '127.0.0.3', 3);
  t.ok(await until(() => asked() === 2), 'another client is admitted on the second address');
  const third = await at(a.target, '127.0.0.4', 4);
  t.ok(await until(() => third.closed), 'a third client is refused: two connections open across both addresses');
  t.notOk(busy.closed || other.closed, 'the busy connections stay');
  const refused = (name: 'refused' | 'refusedClient'): number => tcp.reduce((n, l) => n + l.counters.get(name), 0);
  t.equal(refused('refusedClient'), 1, 'counted as client_limit');
  t.equal(refused('refused'), 1, 'counted as connection_limit');
  t.equal(asked(), 2, 'no refused query reached the upstream');
});

// ---------------------------------------------------------------- defect 9: clients that never read

/** Sends `n` queries from a client that never reads; returns the largest server-side send queue seen while it lives. */
async function flood(t: Test, l: TcpListener, n: number): Promise<{ client: Client; maxTx: number }> {
  const c = await Client.connect(t, l.port, { read: false });
  for (let i = 0; i < n; i++) c.socket.write(query(i));
  let maxTx = 0;
  let last = -1;
  let stable = 0;
  // Sample until the send queue stops moving (a window that stays shut) or the connection is gone; bounded at 3 s.
  for (let i = 0; i < 300 && stable < 10; i++) {
    const s = serverSide(l.port, c.localPort);
    const tx = s?.txQueue ?? 0;
    maxTx = Math.max(maxTx, tx);
    stable = tx === last ? stable + 1 : 0;
    last = tx;
    await sleep(10);
  }
  return { client: c, maxTx };
}

t.test('a client that never reads: the kernel send queue stays small', async (t) => {
  // 60 answers of 60 KB (3.6 MB) and Node's cap out of the way: only SO_SNDBUF bounds the kernel's share.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 100, maxUnsentBytes: 16 * 1024 * 1024 });
  const { client, maxTx } = await flood(t, l, 60);
  t.ok(await until(() => h.queries === 60), 'all queries taken');
  const s = serverSide(l.port, client.localPort);
  t.ok(s !== null && s.txQueue > 0, 'the server-side socket holds unsent answers');
  // Kernel autotuning lets this grow to megabytes (3.5 MB measured). With 32 KiB asked for, sk_sndbuf is 64 KiB,
  // which the kernel may overshoot by one (up to 64 KiB) segment: ~110 KB measured, 192 KiB leaves room.
  t.ok(maxTx <= 192 * 1024, `send queue bounded: max ${maxTx} bytes`);
});

t.test('a client that never reads is reset (its queries wait on its reading past the read timeout), and its queue is freed', async (t) => {
  // 40 answers of 60 KB (2.4 MB): past the kernel's small share and Node's 128 KiB cap. Answers given at once stop
  // being taken short of the cap; the queries left then wait for a client that never reads them.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 100, readTimeoutMs: 300 });
  const { client } = await flood(t, l, 40);
  t.ok(await until(() => l.connections === 0), 'the connection is closed and its slot freed');
  // A plain close would leave an orphan in FIN_WAIT1 still holding the queue until the peer reads; a reset frees it.
  t.ok(await until(() => (serverSide(l.port, client.localPort)?.txQueue ?? 0) === 0), 'no server-side send queue left behind');
  t.equal(l.counters.get('closedUnsentLimit'), 1, 'counted as unsent_limit');
  t.ok(h.queries < 40, `queries stopped being taken while its answers went unread (${h.queries} of 40)`);
});

t.test('socket-options: SO_SNDBUF set and read back, errors as errno values', async (t) => {
  const so = await loadSocketOptions();
  if (typeof so === 'string') {
    t.fail(`koffi binding unavailable: ${so}`);
    return;
  }
  t.equal(so.setSendBuffer(-1, 4096), 9, 'EBADF on a bad fd');
  t.equal(so.unsentBytes(-1), -9);
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, HOST, () => r()));
  t.teardown(() => server.close());
  const fd = fdOf(server);
  t.ok(fd >= 0, 'listening socket has an fd');
  t.equal(so.setSendBuffer(fd, 20_000), 0);
  t.equal(so.sendBuffer(fd), 40_000, 'the kernel doubles it');
});

t.test('a client that never reads, closed as idle or evicted, leaves no send queue behind either', async (t) => {
  // Twenty answers of 60 KB, with Node's unsent cap out of the way so that only the idle timeout or an eviction
  // can close the connection (in production a client gets the same by asking for a little less than the client's
  // receive buffer + ~110 KB + the cap); once the client's receive buffer is full, ~110 KB sit in our kernel send
  // queue against a zero window. A plain close() turns that
  // socket into an orphan in FIN_WAIT1 that keeps the queue while the kernel probes the shut window (minutes): a
  // pod that cycles such connections through idle or the cap makes the node hold 1,024 x 110 KB each cycle.
  // Closed with a reset, as at the unsent cap, the queue is freed at once.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 100, idleTimeoutMs: 300, maxUnsentBytes: 16 * 1024 * 1024 });
  const idle = await flood(t, l, 20);
  t.ok(idle.maxTx > 0, `answers were queued in the kernel (max ${idle.maxTx} bytes)`);
  t.ok(await until(() => l.counters.get('closedIdle') === 1), 'closed as idle');
  t.ok(
    await until(() => (serverSide(l.port, idle.client.localPort)?.txQueue ?? 0) === 0, 3000),
    `no server-side send queue left behind after an idle close (left: ${JSON.stringify(serverSide(l.port, idle.client.localPort))})`,
  );

  const l2 = await startListener(t, h, { maxQueriesPerConnection: 100, maxConnections: 1, maxUnsentBytes: 16 * 1024 * 1024 });
  const victim = await flood(t, l2, 20);
  t.ok((serverSide(l2.port, victim.client.localPort)?.txQueue ?? 0) > 0, 'answers wait in the kernel send queue');
  const d = await Client.connect(t, l2.port);
  d.socket.write(query(9));
  t.ok(await until(() => d.answers.length === 1), 'the newcomer is served');
  t.equal(l2.counters.get('closedEvicted'), 1, 'the reader-less connection was evicted for it');
  t.ok(
    await until(() => (serverSide(l2.port, victim.client.localPort)?.txQueue ?? 0) === 0, 3000),
    `no server-side send queue left behind after an eviction (left: ${JSON.stringify(serverSide(l2.port, victim.client.localPort))})`,
  );
});

t.test('a client that reads is never reset for pipelining: large answers answered at once wait for it to read them, past the unsent cap', async (t) => {
  // Eight 60 KB answers (480 KB) given at once, as cache hits are, for queries in one segment: more than the kernel
  // takes at once and Node's 128 KiB cap together. The client reads all along; it must get every one.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 8 });
  const c = await Client.connect(t, l.port);
  const ids = [1, 2, 3, 4, 5, 6, 7, 8];
  c.socket.write(Buffer.concat(ids.map((id) => query(id))));
  t.ok(await until(() => c.answers.length === ids.length || c.closed), 'the answers arrive');
  t.same([...c.answers].sort((a, b) => a - b), ids, 'every one');
  t.equal(l.counters.get('closedUnsentLimit'), 0, 'not reset');
  t.notOk(c.closed, 'the connection stays open');
});

t.test('a client that reads is never reset for pipelining: large answers to misses in flight together, landing in one turn', async (t) => {
  // Eight queries in flight at once (misses: nothing is written when they are taken, so nothing holds them back),
  // then all eight 60 KB answers (480 KB) land in the same turn, as a coalesced upstream answer or a burst does.
  // The client reads all along: its answers are owed to queries we took, not to its not reading.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 8 });
  const c = await Client.connect(t, l.port);
  const ids = [1, 2, 3, 4, 5, 6, 7, 8];
  c.socket.write(Buffer.concat(ids.map((id) => query(id, true))));
  t.ok(await until(() => h.held.length === ids.length), 'all eight in flight');
  h.release();
  t.ok(await until(() => c.answers.length === ids.length || c.closed), 'the answers arrive');
  t.same([...c.answers].sort((a, b) => a - b), ids, 'every one');
  t.equal(l.counters.get('closedUnsentLimit'), 0, 'not reset');
  t.notOk(c.closed, 'the connection stays open');
});

/** A client that does not read, with `n` queries in flight whose 60 KB answers then land together: far past Node's cap. */
async function unreadBurst(t: Test, l: TcpListener, h: FakeHandler, n: number, firstId: number): Promise<Client> {
  const c = await Client.connect(t, l.port, { read: false });
  const held = h.held.length;
  c.socket.write(Buffer.concat(Array.from({ length: n }, (_, i) => query(firstId + i, true))));
  t.ok(await until(() => h.held.length === held + n), `${n} in flight`);
  h.release();
  return c;
}

t.test('a client that does not read the answers to misses landing together is reset after the read timeout, not kept for the idle timeout', async (t) => {
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 16, readTimeoutMs: 300, idleTimeoutMs: 10_000 });
  await unreadBurst(t, l, h, 16, 1);
  t.ok(await until(() => l.connections === 0, 3000), 'reset');
  t.equal(l.counters.get('closedUnsentLimit'), 1, 'counted as unsent_limit');
  t.equal(l.counters.get('closedIdle'), 0, 'not as idle');
});

for (const shared of [false, true]) {
  const where = shared ? 'two listeners sharing their slots (a on one, b on the other)' : 'the listener';
  t.test(`what answers landing together hold past the unsent cap is bounded across ${where}: when the room is full, the client unread longest is reset`, async (t) => {
    // 16 answers of 60 KB (960 KB) to a client that does not read: the kernel and its receive buffer take at most
    // ~300 KB, Node's cap 128 KiB, so 530 to 730 KB wait in the room. The room fits one such client, not two.
    const h = new FakeHandler(60_000);
    const base = { maxQueriesPerConnection: 16, readTimeoutMs: 60_000, idleTimeoutMs: 60_000 };
    const slots = new TcpSlots({ maxConnections: 16, maxConnectionsPerClient: 0, unsentRoomBytes: 800_000 });
    const la = await startListener(t, h, shared ? { ...base, slots } : { ...base, unsentRoomBytes: 800_000 });
    const lb = shared ? await startListener(t, h, { ...base, slots }) : la;
    const a = await unreadBurst(t, la, h, 16, 1);
    await sleep(200); // a few sweeps: b's answers are stamped unread later than a's
    // A client that does not read does not see the reset either: the server side is what is asserted.
    t.ok(la.connections === 1 && la.counters.get('closedUnsentLimit') === 0, 'a is kept while its answers fit in the room');
    const b = await unreadBurst(t, lb, h, 16, 101);
    t.ok(await until(() => serverSide(la.port, a.localPort) === null), 'a, unread longest, is reset when b\'s answers need the room');
    t.equal(la.counters.get('closedUnsentLimit'), 1, 'counted as unsent_limit, on a\'s listener');
    t.ok(await until(() => la.connections === (shared ? 0 : 1)), 'a\'s listener has forgotten a');
    t.ok(serverSide(lb.port, b.localPort) !== null, 'b, whose answers just landed, is kept');
    b.socket.resume();
    t.ok(await until(() => b.answers.length === 16), 'and gets every answer once it reads');
    t.equal(la.counters.get('closedUnsentLimit') + (shared ? lb.counters.get('closedUnsentLimit') : 0), 1, 'nothing more reset');
  });
}

t.test('UnsentRoom: a holder not stamped unread (-1) is the last to go, not the first', async (t) => {
  // -1 is "not waiting on its reading", not "since the beginning of time": ordered as a number, such a holder (bytes
  // past a cap below the socket's high-water mark, which the take limit never goes under) was cut before a stalled one.
  const closed: string[] = [];
  const holder = (name: string, overUnsentCap: number, unreadSinceMs: number): UnsentRoomHolder => ({
    overUnsentCap, unreadSinceMs, close: () => closed.push(name),
  });
  const stalled = holder('stalled', 100, 5);
  const reading = holder('reading', 100, -1);
  new UnsentRoom(150, new Set([reading, stalled])).fit();
  t.same(closed, ['stalled'], 'the one unread since 5 goes; the one not unread stays');
});

t.test('shutdown (a plain listener): queries held while a client has not read its answers are answered once it reads; drained() waits for them', async (t) => {
  // Eight 60 KB answers given at once to a client not reading yet: the kernel and Node take a few, the rest of its
  // queries wait on its reading. The stop comes, then the client reads: what it asked before the stop is its due.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 100 });
  const c = await Client.connect(t, l.port, { read: false });
  const ids = [1, 2, 3, 4, 5, 6, 7, 8];
  c.socket.write(Buffer.concat(ids.map((id) => query(id))));
  let taken = -1;
  t.ok(await until(() => {
    const still = h.queries === taken;
    taken = h.queries;
    return still && taken > 0;
  }), 'queries stop being taken');
  t.ok(h.queries < ids.length, `some wait on the client's reading (${h.queries} of ${ids.length} taken)`);
  l.pause();
  c.socket.resume();
  let drained = false;
  void l.drained().then(() => {
    drained = true;
  });
  await sleep(0);
  t.ok(await until(() => drained), 'drained() resolves once they are answered');
  // drained() means answered and handed to the kernel; the client reading them is its own pace, so only what the
  // server did is asserted at this instant.
  t.equal(h.queries, ids.length, 'every query was taken and answered before drained()');
  t.ok(await until(() => c.answers.length === ids.length), 'and the client reads every answer');
  await l.close();
  t.ok(await until(() => c.closed), 'the connection is closed');
  t.same([...c.answers].sort((a, b) => a - b), ids, 'every one arrived');
});

t.test('shutdown (a plain listener): a client that never reads its answers holds drained() for the read timeout at most', async (t) => {
  // A large unsent cap, so every query is taken and its answer waits in Node's buffer, none held back: only the
  // answers written out are left owed, to a client that will never take them.
  const h = new FakeHandler(60_000);
  const l = await startListener(t, h, { maxQueriesPerConnection: 100, readTimeoutMs: 300, maxUnsentBytes: 4 * 1024 * 1024 });
  const reader = await Client.connect(t, l.port);
  reader.socket.write(query(99));
  t.ok(await until(() => reader.answers.length === 1), 'a client that read its answer');
  const c = await Client.connect(t, l.port, { read: false });
  const ids = Array.from({ length: 20 }, (_, i) => i + 1);
  c.socket.write(Buffer.concat(ids.map((id) => query(id))));
  t.ok(await until(() => h.queries === ids.length + 1), 'every query taken');
  l.pause();
  let drained = false;
  void l.drained().then(() => {
    drained = true;
  });
  t.ok(await until(() => drained, 3000), 'drained() resolves, well before the idle timeout (10 s)');
  t.equal(l.counters.get('closedUnsentLimit'), 1, 'the client not reading was reset');
  t.ok(await until(() => reader.closed), 'the one that read was closed as it owed nothing');
});


let handOverPort = 21_000 + (process.pid % 10_000);

/**
 * The old listener of an upgrade, with `h` and `opts`: a client of it sends ten queries and does not read their
 * answers, which wait in Node's buffer (its unsent cap out of the way); then a new listener starts beside it on the
 * same port (SO_REUSEPORT) and the old one is paused (it drains). old is null when SO_REUSEPORT is unavailable.
 */
async function handOverUnread(
  t: Test,
  h: FakeHandler,
  opts: Partial<TcpListenerOptions>,
  halfClose = false,
): Promise<{ old: TcpListener | null; c: Client; ids: number[] }> {
  // A port of its own first: the listeners must know it (not 0) to count each other in /proc/net/tcp. An address
  // only this file uses and a port below the ephemeral range: a port-0 listen closed again left a moment in which
  // an outgoing connection could take the port, and on 127.0.0.1 another file's agent (SO_REUSEPORT) could share it.
  const host = '127.0.21.4';
  const port = handOverPort++;
  const base = { idleTimeoutMs: 10_000, maxConnections: 4, maxQueriesPerConnection: 100, reusePort: true };
  const old = new TcpListener({ host, port }, h, silentLogger, { ...base, maxUnsentBytes: 4 * 1024 * 1024, ...opts });
  await old.start();
  t.teardown(() => old.close());
  const c = await Client.connect(t, old.port, { read: false, host });
  const ids = Array.from({ length: 10 }, (_, i) => i + 1);
  if (!old.reusePort) {
    t.fail('SO_REUSEPORT unavailable (koffi)');
    return { old: null, c, ids };
  }
  c.socket.write(Buffer.concat(ids.map((id) => query(id))));
  t.ok(await until(() => h.queries === ids.length), 'every query taken and answered');
  if (halfClose) {
    // Its FIN after its queries (allowHalfOpen): the server has read it once its side is in CLOSE_WAIT (8).
    c.socket.end();
    t.ok(await until(() => serverSide(port, c.localPort)?.state === 8), 'the server has read the client FIN');
  }
  const beside = new TcpListener({ host, port }, new FakeHandler(), silentLogger, base);
  await beside.start();
  t.teardown(() => beside.close());
  old.pause();
  t.ok(old.handedOver, 'handed over to the listener beside it');
  return { old, c, ids };
}

t.test('handover (a draining listener): answers a client has not read yet are handed over before drained(), not cut at close()', async (t) => {
  // The old listener of an upgrade: a new one beside it on the same port (SO_REUSEPORT), this one paused. A client
  // of the old one has had its queries answered but has not read them yet: the answers wait in Node's buffer.
  // The connection then owes nothing and ends, but drained() must wait for what it wrote to be handed over, or
  // close() right after it (the agent's stop) throws the unread answers away.
  const h = new FakeHandler(60_000);
  const { old, c, ids } = await handOverUnread(t, h, {});
  if (old === null) return;
  await readLateThenClose(t, old, c, ids, 500);
});

/** The client starts reading after `readAfterMs`; drained() must resolve, and close() after it lose nothing. */
async function readLateThenClose(t: Test, old: TcpListener, c: Client, ids: number[], readAfterMs: number): Promise<void> {
  setTimeout(() => c.socket.resume(), readAfterMs);
  let drained = false;
  void old.drained().then(() => {
    drained = true;
  });
  t.ok(await until(() => drained), 'drained() resolves');
  await old.close();
  t.ok(await until(() => c.closed), 'the connection is closed');
  t.same([...c.answers].sort((a, b) => a - b), ids, 'every answer arrived');
}

t.test('handover (a draining listener): a client that never reads what it was answered holds drained() for the read timeout at most', async (t) => {
  const h = new FakeHandler(60_000);
  const { old } = await handOverUnread(t, h, { readTimeoutMs: 300 });
  if (old === null) return;
  let drained = false;
  void old.drained().then(() => {
    drained = true;
  });
  t.ok(await until(() => drained, 3000), 'drained() resolves, well before the idle timeout (10 s)');
  t.equal(old.counters.get('closedUnsentLimit'), 1, 'the client not reading was reset');
});

t.test('handover (a draining listener): a client that sent FIN after its queries and reads slowly gets every answer, not an idle reset', async (t) => {
  // The connection ended on the client FIN (stopReading), not on finish(): its answers still wait in Node's buffer
  // when the drain's idle limit (DRAIN_IDLE_MS, 500 ms) passes; closing it as idle would reset them.
  const h = new FakeHandler(60_000);
  const { old, c, ids } = await handOverUnread(t, h, {}, true);
  if (old === null) return;
  await readLateThenClose(t, old, c, ids, 800);
  t.equal(old.counters.get('closedIdle'), 0, 'not closed as idle');
});

t.test('close(): queries waiting behind the in-flight cap are dropped with the connection, never handed to the handler after it', async (t) => {
  // The agent's stop closes the listener with a query in flight; the resolver then discards it (aborted). The
  // queries read behind it must not reach the handler on a connection already closed (upstream queries for nobody).
  const h = new FakeHandler();
  const l = await startListener(t, h, { maxQueriesPerConnection: 1 });
  const c = await Client.connect(t, l.port);
  c.socket.write(Buffer.concat([query(1, true), query(2), query(3)]));
  t.ok(await until(() => h.held.length === 1), 'the first query is in flight, the other two wait behind the cap');
  await l.close();
  const held = h.held.splice(0);
  for (const x of held) x.channel.discard(x.peer);
  t.equal(h.queries, 1, 'no query taken after close()');
});

// ---------------------------------------------------------------- the open-file limit

/** A listener (dist/, maxConnections 1,024) in a child whose open-file limit is set by `ulimit` first. */
interface FdLimitChild {
  readonly port: number;
  readonly pid: number;
  /** The child's refusedFdLimit (-1 when that counter does not exist). */
  refused(): Promise<number>;
}

async function fdLimitChild(t: Test, ulimit: string): Promise<FdLimitChild> {
  const dist = fileURLToPath(new URL('../dist/src/server/tcp-listener.js', import.meta.url));
  const log = fileURLToPath(new URL('../dist/src/log.js', import.meta.url));
  const script = `
    const { TcpListener } = await import(${JSON.stringify(dist)});
    const { silentLogger } = await import(${JSON.stringify(log)});
    const handler = { handle(msg, ch, peer) { ch.send(msg, peer); } };
    const l = new TcpListener({ host: '127.0.0.1', port: 0 }, handler, silentLogger, { idleTimeoutMs: 60000, maxConnections: 1024, maxConnectionsPerClient: 0 });
    await l.start();
    console.log(l.port);
    process.stdin.on('data', () => {
      const slot = l.counters.schema.slot.refusedFdLimit;
      console.log(JSON.stringify({ refusedFdLimit: slot === undefined ? -1 : l.counters.values[slot] }));
    });`;
  const child = spawn('bash', ['-c', `${ulimit}; exec node --input-type=module -e "$0"`, script], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => child.kill());
  const lines: string[] = [];
  child.stdout.on('data', (c: Buffer) => lines.push(...c.toString().split('\n').filter((x) => x !== '')));
  t.ok(await until(() => lines.length === 1), 'the child listens');
  const refused = async (): Promise<number> => {
    const before = lines.length;
    child.stdin.write('\n');
    t.ok(await until(() => lines.length === before + 1), 'the child reports');
    return (JSON.parse(lines[before] ?? '{}') as { refusedFdLimit: number }).refusedFdLimit;
  };
  return { port: Number(lines[0]), pid: child.pid ?? -1, refused };
}

/** `n` clients connect at once and each sends a query, then all close; how many were answered. */
async function connectMany(t: Test, port: number, n: number): Promise<number> {
  const clients: Client[] = [];
  for (let i = 0; i < n; i++) clients.push(await Client.connect(t, port));
  for (const [i, c] of clients.entries()) c.socket.write(query(i));
  await until(() => clients.every((c) => c.answers.length === 1 || c.closed));
  const answered = clients.filter((c) => c.answers.length === 1).length;
  for (const c of clients) c.socket.destroy();
  return answered;
}

async function underFdLimit(t: Test, ulimit: string, n: number): Promise<{ answered: number; refusedFdLimit: number }> {
  const child = await fdLimitChild(t, ulimit);
  const answered = await connectMany(t, child.port, n);
  return { answered, refusedFdLimit: await child.refused() };
}

t.test('the open-file limit: at it newcomers are refused and counted, not dropped in silence (libuv closes them on EMFILE)', async (t) => {
  // Node raises the soft limit to the hard one at start; `ulimit -n` sets both.
  const r = await underFdLimit(t, 'ulimit -n 256', 200);
  t.ok(r.answered > 0 && r.answered < 200, `some answered (${r.answered}), not all: the limit is hit`);
  t.equal(r.refusedFdLimit, 200 - r.answered, 'every one turned away is counted as refused, reason fd_limit');
});

t.test('the open-file limit changed while running (prlimit): the listener follows it, refusing and counting at the new limit', async (t) => {
  // Read only at start, a limit lowered later left the newcomers past it to libuv's silent close again, and one
  // raised later (the operator's remedy for fd_limit refusals, without a restart) still refused them.
  const child = await fdLimitChild(t, 'ulimit -n 4096');
  const prlimit = (soft: number): void => {
    const r = spawnSync('prlimit', ['--pid', String(child.pid), `--nofile=${soft}:4096`], { encoding: 'utf8' });
    t.equal(r.status, 0, `prlimit --nofile=${soft}:4096 ${r.stderr}`);
  };
  prlimit(256);
  await sleep(1100); // the limit is read again at most once a second
  const low = await connectMany(t, child.port, 300);
  t.ok(low > 0 && low < 300, `some answered (${low}), not all: the lowered limit is hit`);
  t.equal(await child.refused(), 300 - low, 'every one turned away at the lowered limit is counted as refused, reason fd_limit');
  prlimit(4096);
  await sleep(1100);
  const before = await child.refused();
  t.equal(await connectMany(t, child.port, 200), 200, 'once raised again, every one is answered');
  t.equal(await child.refused(), before, 'none refused');
});
