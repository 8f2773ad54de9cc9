// Bad input never hurts the agent: thousands of random and mutated packets
// over UDP and TCP (lying length prefixes, zero-length frames, connections
// cut mid-frame). Every answer must be a well-formed response to the packet
// that provoked it; nothing that must be dropped is answered; every query is
// accounted for; and afterwards the agent still answers, its caches are
// within their capacities and its memory did not run away.
// Replay a failure with FUZZ_SEED=<seed printed in the comment>.
import t from 'tap';
import dgram from 'node:dgram';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import * as dnsPacket from 'dns-packet';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { TcpListener } from '../src/server/tcp-listener.js';
import { startAgent, type TestAgent } from './helpers/agent.js';
import { buildQuery, sleep, tcpQuery, udpExchange, udpQuery, type Target } from './helpers/dns-client.js';
import { Fuzz, questionNameEnd } from './helpers/fuzz-packets.js';

const HOST = '127.0.30.1';
const SEED = (process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : Date.now()) >>> 0;
const CACHE_SIZE = 64;
const NEGATIVE_CACHE_SIZE = 256;
/** Datagrams sent back to back before yielding to the event loop (the agent runs in this process). */
const UDP_BATCH = 200;

const clusterRecords = {
  'web.default.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00::a'], ttl: 30 },
};
const externalRecords = {
  'www.example.com': { A: ['192.0.2.80'], ttl: 300 },
  // ~1 KB uncompressed: over 512 without EDNS, so UDP answers exercise truncation.
  'big.example.com': { A: Array.from({ length: 30 }, (_, i) => `198.51.100.${i + 1}`), ttl: 60 },
};

const rcodeOf = (b: Buffer): number => b[3]! & 0xf;
const opcodeOf = (b: Buffer): number => (b[2]! >> 3) & 0xf;
const dataOf = (p: dnsPacket.DecodedPacket): unknown[] => (p.answers ?? []).map((a) => (a as { data?: unknown }).data);

async function sims(t: { teardown(fn: () => unknown): void }) {
  const cluster = await SimDnsServer.start({ handler: staticHandler(clusterRecords, { soaZone: 'cluster.local', negativeTtl: 30 }) });
  const external = await SimDnsServer.start({ handler: staticHandler(externalRecords, { soaZone: 'example.com', negativeTtl: 60 }) });
  t.teardown(() => Promise.all([cluster.close(), external.close()]));
  return ['--upstream-addr', `127.0.0.1:${cluster.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`];
}

/** What the kernel says it dropped for full UDP receive buffers (this network namespace). */
function udpRcvbufErrors(): number {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0]!.split(/\s+/);
    const values = lines[1]!.split(/\s+/);
    return Number(values[names.indexOf('RcvbufErrors')] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * Checks one answer against the query that provoked it (or, with no query,
 * only its form). Returns what is wrong, or null.
 */
function checkAnswer(ans: Buffer, q: Buffer | null, transport: 'udp' | 'tcp'): string | null {
  let p: dnsPacket.DecodedPacket;
  try {
    p = dnsPacket.decode(ans);
  } catch (e) {
    return `undecodable answer (${(e as Error).message})`;
  }
  if (dnsPacket.decode.bytes !== ans.length) return `answer has ${ans.length - dnsPacket.decode.bytes} trailing bytes`;
  if (!p.flag_qr) return 'answer has QR=0';
  if (!p.flag_ra) return 'answer has RA=0';
  const rcode = rcodeOf(ans);
  // 0-5, or NOTAUTH (9) for a TSIG-signed query (RFC 8945 5.2: we hold no keys).
  if (rcode > 5 && rcode !== 9) return `rcode ${rcode}`;
  const opts = (p.additionals ?? []).filter((a): a is dnsPacket.OptAnswer => a.type === 'OPT');
  if (opts.length > 1) return 'answer has two OPT records';
  const ext = opts[0]?.extendedRcode ?? 0;
  if (ext !== 0 && !(ext === 1 && rcode === 0)) return `extended rcode ${ext} with header rcode ${rcode} (only BADVERS expected)`;
  // TC=1 answers keep the whole records that fit (RFC 2181 9); the decode above checked they are whole.
  const qd = ans.readUInt16BE(4);
  if (qd > 1) return `QDCOUNT ${qd} in answer`;
  if (qd === 0 && rcode !== 1 && rcode !== 4) return `no question in a rcode ${rcode} answer`;
  if (transport === 'udp' && ans.length > 1232) return `UDP answer of ${ans.length} bytes over --max-udp-size`;
  if (q === null) return null;
  if (ans.readUInt16BE(0) !== q.readUInt16BE(0)) return 'id differs';
  if (opcodeOf(ans) !== opcodeOf(q)) return `opcode ${opcodeOf(ans)} for a query with opcode ${opcodeOf(q)}`;
  // Rules the agent must apply whatever else is wrong with the packet, in this order.
  if (opcodeOf(q) !== 0 && rcode !== 4) return `opcode ${opcodeOf(q)} answered rcode ${rcode}, not NOTIMP`;
  if (opcodeOf(q) === 0 && q.readUInt16BE(4) !== 1 && rcode !== 1) return `QDCOUNT ${q.readUInt16BE(4)} answered rcode ${rcode}, not FORMERR`;
  if (transport === 'udp' && q.readUInt16BE(10) === 0 && ans.length > 512) return `${ans.length}-byte UDP answer to a query without EDNS`;
  if (qd === 1) {
    // The question is echoed byte for byte (the client's case included).
    const end = questionNameEnd(ans);
    if (end < 0 || end + 4 > ans.length) return 'answer question unreadable';
    if (end + 4 > q.length || !ans.subarray(12, end + 4).equals(q.subarray(12, end + 4))) return 'question not echoed';
  }
  return null;
}

/** Queries sent on one channel (the UDP socket, or one TCP connection), matched to answers by id. */
class Ledger {
  /** id -> query still owed an answer. */
  readonly owed = new Map<number, { q: Buffer; kind: string }>();
  /** ids of packets that must get no answer (short, or QR=1). */
  readonly mustDrop = new Map<number, string>();
  readonly answered = new Set<number>();
  /** Packets the agent must drop, counted (including those too short to carry an id). */
  drops = 0;
  sent = 0;
  answers = 0;
  readonly rcodes = new Map<number, number>();
  readonly failures: string[] = [];
  failureCount = 0;
  readonly transport: 'udp' | 'tcp';

  constructor(transport: 'udp' | 'tcp') {
    this.transport = transport;
  }

  add(q: Buffer, kind: string): void {
    this.sent++;
    if (q.length < 12 || (q[2]! & 0x80) !== 0) {
      this.drops++;
      if (q.length >= 2) this.mustDrop.set(q.readUInt16BE(0), kind);
      return;
    }
    const id = q.readUInt16BE(0);
    if (this.owed.has(id) || this.answered.has(id)) throw new Error(`test bug: id ${id} reused`);
    this.owed.set(id, { q, kind });
  }

  fail(msg: string): void {
    this.failureCount++;
    if (this.failures.length < 10) this.failures.push(msg);
  }

  onAnswer(ans: Buffer): void {
    this.answers++;
    if (ans.length < 12) return this.fail(`${ans.length}-byte answer`);
    const id = ans.readUInt16BE(0);
    this.rcodes.set(rcodeOf(ans), (this.rcodes.get(rcodeOf(ans)) ?? 0) + 1);
    const owed = this.owed.get(id);
    if (owed === undefined) {
      if (this.mustDrop.has(id)) return this.fail(`id ${id}: answered a packet that must be dropped (${this.mustDrop.get(id)})`);
      if (this.answered.has(id)) return this.fail(`id ${id}: second answer`);
      return this.fail(`id ${id}: answer to nothing we sent`);
    }
    this.owed.delete(id);
    this.answered.add(id);
    const bad = checkAnswer(ans, owed.q, this.transport);
    if (bad !== null) this.fail(`id ${id} (${owed.kind}, query ${owed.q.toString('hex').slice(0, 120)}): ${bad}`);
  }
}

function bindClient(): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 * 1024 * 1024 });
  return new Promise((resolve) => s.bind(0, '127.0.0.1', () => resolve(s)));
}

/** Waits (bounded) until `done()` holds; returns whether it did. */
async function until(done: () => boolean, maxMs: number): Promise<boolean> {
  for (let waited = 0; waited < maxMs; waited += 20) {
    if (done()) return true;
    await sleep(20);
  }
  return done();
}

/**
 * Fuzz packets over UDP in batches; answers land in `ledger` through the
 * socket's handler. After each batch, waits (bounded) until the agent has
 * read it (`seen` is its UDP request counter) or stops making progress, so
 * the batches never pile up in the socket buffer: this is about
 * correctness, not overload.
 */
async function sendUdp(sock: dgram.Socket, target: Target, fuzz: Fuzz, ledger: Ledger, count: number, nextId: () => number, seen: () => number): Promise<void> {
  const base = seen() - ledger.sent;
  for (let sent = 0; sent < count; ) {
    for (let i = 0; i < UDP_BATCH && sent < count; i++, sent++) {
      const id = nextId();
      const { kind, bytes } = fuzz.packet(id);
      if (bytes.length >= 2) bytes.writeUInt16BE(id, 0);
      ledger.add(bytes, kind);
      sock.send(bytes, target.port, target.host);
    }
    let last = -1;
    for (let i = 0, idle = 0; i < 2000 && idle < 5 && seen() < base + ledger.sent; i++) {
      idle = seen() === last ? idle + 1 : 0;
      last = seen();
      await sleep(1);
    }
  }
}

/**
 * One TCP connection with honest framing: every payload framed with its real
 * length (zero-length frames included), written in random-sized chunks so
 * frames straddle reads. Resolves once every owed answer came (or the time
 * ran out) and the connection is closed.
 */
function tcpHonest(target: Target, fuzz: Fuzz, payloads: Array<{ kind: string; bytes: Buffer }>): Promise<Ledger> {
  const ledger = new Ledger('tcp');
  for (const p of payloads) ledger.add(p.bytes, p.kind);
  const stream = Buffer.concat(payloads.map((p) => frame(p.bytes)));
  return new Promise((resolve) => {
    const sock = net.connect(target.port, target.host);
    const dec = new FrameDecoder((f) => ledger.onAnswer(Buffer.from(f)));
    let finished = false;
    let written = false;
    const finish = (): void => {
      if (finished || !written) return;
      finished = true;
      clearTimeout(timer);
      sock.end();
      sock.once('close', () => resolve(ledger));
      setTimeout(() => sock.destroy(), 1000).unref();
    };
    const timer = setTimeout(() => {
      written = true;
      finish();
    }, 6000);
    sock.on('data', (c) => {
      dec.push(c);
      if (ledger.owed.size === 0) finish();
    });
    sock.on('error', (e) => {
      ledger.fail(`tcp client error ${e.message}`);
      finished = true;
      clearTimeout(timer);
      resolve(ledger);
    });
    sock.on('connect', async () => {
      for (let off = 0; off < stream.length; ) {
        const n = 1 + fuzz.int(700);
        sock.write(stream.subarray(off, off + n));
        off += n;
        if (fuzz.chance(0.2)) await sleep(0);
      }
      written = true;
      if (ledger.owed.size === 0) finish();
    });
  });
}

/**
 * A TCP connection that misbehaves (`script` writes to it). Every frame that
 * comes back must still be a well-formed answer; resolves when the agent has
 * closed the connection (or after a bound).
 */
function tcpLiar(target: Target, script: (sock: net.Socket, answers: () => number) => Promise<void>): Promise<{ failures: string[]; answers: number; closed: boolean }> {
  const failures: string[] = [];
  let answers = 0;
  return new Promise((resolve) => {
    const sock = net.connect(target.port, target.host);
    const dec = new FrameDecoder((f) => {
      answers++;
      const bad = checkAnswer(Buffer.from(f), null, 'tcp');
      if (bad !== null && failures.length < 5) failures.push(bad);
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ failures, answers, closed: false });
    }, 5000);
    sock.on('data', (c) => dec.push(c));
    sock.on('error', () => {}); // a reset after our own destroy() or half-frame is part of the game
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ failures, answers, closed: true });
    });
    sock.on('connect', () => void script(sock, () => answers));
  });
}

t.comment(`fuzz seed ${SEED} (replay with FUZZ_SEED=${SEED})`);

t.test('hand-made bad packets get the precise treatment', async (t) => {
  const a = await startAgent(HOST, await sims(t));
  t.teardown(a.stop);
  const q = (id: number, edns = false): Buffer => buildQuery('www.example.com', { id, edns });
  const set16 = (b: Buffer, off: number, v: number): Buffer => {
    const c = Buffer.from(b);
    c.writeUInt16BE(v, off);
    return c;
  };
  const withAdditional = (b: Buffer, rr: Buffer, n = 1): Buffer => set16(Buffer.concat([b, rr]), 10, b.readUInt16BE(10) + n);
  const opt = (owner: number[], version = 0, rdlen = 0, rdata: number[] = []): Buffer =>
    Buffer.from([...owner, 0, 41, 0x04, 0xd0, 0, version, 0, 0, rdlen >> 8, rdlen & 0xff, ...rdata]);
  // 'www.example.com' is 17 bytes at offset 12; qtype at 29, qclass at 31.
  const pointerQuestion = Buffer.concat([q(7).subarray(0, 12), Buffer.from([3, 0x77, 0x77, 0x77, 0xc0, 12, 0, 1, 0, 1])]);
  const selfPointer = Buffer.concat([q(8).subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
  const label64 = Buffer.from(q(9));
  label64[12] = 64;
  const opcode = (id: number, op: number): Buffer => {
    const b = q(id);
    b[2] = (b[2]! & 0x87) | (op << 3);
    return b;
  };
  const qr = q(6);
  qr[2]! |= 0x80;
  const at = q(20).length;
  const cases: Array<{ what: string; msg: Buffer; rcode: number | null; question?: boolean }> = [
    { what: 'empty datagram', msg: Buffer.alloc(0), rcode: null },
    { what: '1 byte', msg: Buffer.from([0]), rcode: null },
    { what: '11-byte header', msg: q(1).subarray(0, 11), rcode: null },
    { what: 'QR=1 (a response sent to us)', msg: qr, rcode: null },
    { what: 'QDCOUNT=0', msg: set16(q(2).subarray(0, 12), 4, 0), rcode: 1, question: false },
    { what: 'QDCOUNT=2', msg: set16(q(3), 4, 2), rcode: 1, question: false },
    { what: 'opcode 1 (IQUERY)', msg: opcode(4, 1), rcode: 4, question: false },
    { what: 'opcode 2 (STATUS)', msg: opcode(5, 2), rcode: 4, question: false },
    { what: 'opcode 5 (UPDATE)', msg: opcode(10, 5), rcode: 4, question: false },
    { what: 'opcode 15', msg: opcode(11, 15), rcode: 4, question: false },
    { what: 'pointer in the question (to its own start)', msg: selfPointer, rcode: 1, question: false },
    { what: 'pointer in the question (tail)', msg: pointerQuestion, rcode: 1, question: false },
    { what: 'label length 64', msg: label64, rcode: 1, question: false },
    { what: 'label runs past the end', msg: q(12).subarray(0, 20), rcode: 1, question: false },
    { what: 'no qtype/qclass', msg: q(13).subarray(0, 29), rcode: 1, question: false },
    { what: 'ANCOUNT=1', msg: set16(q(14), 6, 1), rcode: 1, question: true },
    { what: 'NSCOUNT=0xffff', msg: set16(q(15), 8, 0xffff), rcode: 1, question: true },
    { what: 'ARCOUNT=0xffff', msg: set16(q(16), 10, 0xffff), rcode: 1, question: true },
    { what: 'qtype OPT', msg: set16(q(17), 29, 41), rcode: 1, question: true },
    { what: 'qtype AXFR', msg: set16(q(18), 29, 252), rcode: 4, question: true },
    { what: 'class CH', msg: set16(q(19), 31, 3), rcode: 4, question: true },
    { what: 'pointer loop in an additional record', msg: withAdditional(q(20), Buffer.from([0xc0 | (at >> 8), at & 0xff, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])), rcode: 1, question: true },
    { what: 'two OPT records', msg: withAdditional(q(21), Buffer.concat([opt([0]), opt([0])]), 2), rcode: 1, question: true },
    { what: 'OPT owner not the root', msg: withAdditional(q(22), opt([1, 0x78, 0])), rcode: 1, question: true },
    { what: 'OPT owner a pointer to the question', msg: withAdditional(q(23), opt([0xc0, 12])), rcode: 1, question: true },
    { what: 'OPT rdlength past the end', msg: withAdditional(q(24), opt([0], 0, 10, [0, 12, 0])), rcode: 1, question: true },
  ];
  const results = await Promise.all(cases.map((c) => udpExchange(a.target, c.msg, c.rcode === null ? 400 : 2000)));
  cases.forEach((c, i) => {
    const ans = results[i]!;
    if (c.rcode === null) {
      t.equal(ans, null, `${c.what}: no answer`);
      return;
    }
    if (ans === null) return t.fail(`${c.what}: no answer`);
    t.equal(rcodeOf(ans), c.rcode, `${c.what}: rcode ${c.rcode}`);
    t.equal(checkAnswer(ans, c.msg, 'udp'), null, `${c.what}: well-formed, id ${c.msg.readUInt16BE(0)}`);
    t.equal(ans.readUInt16BE(4), c.question === true ? 1 : 0, `${c.what}: question ${c.question === true ? 'echoed' : 'absent'}`);
  });
  // EDNS version 1: BADVERS (extended rcode 16 = 1 in the OPT, 0 in the header), question echoed, our OPT at version 0.
  const v1 = withAdditional(q(30), opt([0], 1));
  const bv = await udpExchange(a.target, v1);
  t.not(bv, null, 'EDNS version 1 answered');
  if (bv !== null) {
    const p = dnsPacket.decode(bv);
    const o = (p.additionals ?? []).find((r): r is dnsPacket.OptAnswer => r.type === 'OPT');
    t.equal(rcodeOf(bv), 0, 'BADVERS: header rcode 0');
    t.equal(o?.extendedRcode, 1, 'BADVERS: extended rcode 1 in the OPT');
    t.equal(o?.ednsVersion, 0, 'our OPT says version 0');
    t.equal(p.questions?.[0]?.name, 'www.example.com');
  }
  // And a well-formed query next to them is answered.
  t.same(dataOf(await udpQuery(a.target, 'www.example.com')), ['192.0.2.80']);
});

t.test(`fuzz: random and mutated packets over UDP and TCP (seed ${SEED})`, async (t) => {
  const a: TestAgent = await startAgent(HOST, [
    ...(await sims(t)),
    '--timeout', '500ms',
    '--cache-size', String(CACHE_SIZE),
    '--negative-cache-size', String(NEGATIVE_CACHE_SIZE),
  ]);
  t.teardown(a.stop);
  const counters = a.agent.hitPath.counters.values;
  const ServerCounter = SERVER_COUNTERS.slot;
  const tcpListener = a.agent.listeners.find((l): l is TcpListener => l instanceof TcpListener)!;
  const fuzz = new Fuzz(SEED);
  const client = await bindClient();
  t.teardown(() => client.close());
  const udp = new Ledger('udp');
  client.on('message', (m, rinfo) => {
    if (rinfo.address !== HOST || rinfo.port !== a.target.port) udp.fail(`datagram from ${rinfo.address}:${rinfo.port}`);
    udp.onAnswer(m);
  });
  let idSeq = 0;
  const nextId = (): number => {
    if (idSeq > 0xffff) throw new Error('test bug: more UDP packets than ids');
    return idSeq++;
  };
  // With --timeout 500ms every query has its answer (SERVFAIL at worst) well within 3 s.
  const drained = (): Promise<boolean> => until(() => udp.owed.size === 0 && a.agent.hitPath.inflight === 0, 3000);
  const rss = (): number => {
    (globalThis as { gc?: () => void }).gc?.();
    return process.memoryUsage().rss;
  };
  const sum = (from: number, to: number): number => {
    let s = 0;
    for (let i = from; i <= to; i++) s += counters[i]!;
    return s;
  };
  const udpSeen = (): number => counters[ServerCounter.requestsUdp]!;
  const rcvbufBefore = udpRcvbufErrors();

  // Warm-up: the same code paths, so JIT, buffer pools and the caches (which fill here) are not counted as growth.
  await sendUdp(client, a.target, fuzz, udp, 1500, nextId, udpSeen);
  const warmTcp = await tcpHonest(a.target, fuzz, Array.from({ length: 300 }, (_, i) => fuzz.packet(i)).map((p, i) => {
    if (p.bytes.length >= 2) p.bytes.writeUInt16BE(i, 0);
    return p;
  }));
  t.equal(warmTcp.failureCount, 0, `warm-up TCP: ${warmTcp.failures.join('; ')}`);
  await drained();
  const rssWarm = rss();

  // UDP: 10,500 more; the counters move by exactly what we sent and what must be dropped.
  const reqUdp0 = counters[ServerCounter.requestsUdp]!;
  const dropped0 = counters[ServerCounter.dropped]!;
  const sent0 = udp.sent;
  const drops0 = udp.drops;
  await sendUdp(client, a.target, fuzz, udp, 10_500, nextId, udpSeen);
  await drained();
  await sleep(100); // a stray late or duplicate answer would show up here
  const rcvbufLost = udpRcvbufErrors() - rcvbufBefore;
  t.comment(`UDP: ${udp.sent} packets, ${udp.answers} answers, rcodes ${JSON.stringify(Object.fromEntries(udp.rcodes))}, ${udp.drops} to drop, kernel receive-buffer drops ${rcvbufLost}`);
  for (const [id, o] of [...udp.owed].slice(0, 5)) t.comment(`unanswered: id ${id} (${o.kind}) ${o.q.toString('hex').slice(0, 120)}`);
  t.ok(udp.sent >= 12_000, `${udp.sent} UDP packets sent`);
  t.equal(udp.failureCount, 0, 'every UDP answer well-formed and matching its query');
  t.same(udp.failures, [], 'first UDP failures');
  if (rcvbufLost === 0) {
    t.equal(udp.owed.size, 0, 'every UDP query that deserves an answer got one');
    t.equal(counters[ServerCounter.requestsUdp]! - reqUdp0, udp.sent - sent0, 'the agent saw every datagram');
    t.equal(counters[ServerCounter.dropped]! - dropped0, udp.drops - drops0, 'and dropped exactly the short ones and the responses');
  } else {
    // The kernel says it lost datagrams (somewhere in this namespace): only bound the missing answers by that.
    t.ok(udp.owed.size <= rcvbufLost, `${udp.owed.size} unanswered <= ${rcvbufLost} datagrams the kernel dropped`);
  }
  t.ok((udp.rcodes.get(1) ?? 0) > 100 && (udp.rcodes.get(4) ?? 0) > 100 && (udp.rcodes.get(3) ?? 0) > 100, 'the mix provoked FORMERR, NOTIMP and NXDOMAIN alike');

  // TCP, honest framing: 8 connections x 400 fuzz payloads, answered in any order.
  const reqTcp0 = counters[ServerCounter.requestsTcp]!;
  const droppedTcp0 = counters[ServerCounter.dropped]!;
  const honest = await Promise.all(
    Array.from({ length: 8 }, () =>
      tcpHonest(a.target, fuzz, Array.from({ length: 400 }, (_, i) => {
        // Some zero-length frames among them.
        const p = fuzz.chance(0.02) ? { kind: 'zero-length', bytes: Buffer.alloc(0) } : fuzz.packet(i);
        if (p.bytes.length >= 2) p.bytes.writeUInt16BE(i, 0);
        return p;
      })),
    ),
  );
  const tcpSent = honest.reduce((n, l) => n + l.sent, 0);
  const tcpDrops = honest.reduce((n, l) => n + l.drops, 0);
  t.comment(`TCP honest: ${tcpSent} frames, ${honest.reduce((n, l) => n + l.answers, 0)} answers, ${tcpDrops} to drop`);
  t.same(honest.flatMap((l) => l.failures).slice(0, 10), [], 'every TCP answer well-formed and matching its query');
  t.same(honest.map((l) => l.owed.size), honest.map(() => 0), 'every TCP query that deserves an answer got one');
  t.equal(counters[ServerCounter.requestsTcp]! - reqTcp0, tcpSent, 'the agent saw every frame');
  t.equal(counters[ServerCounter.dropped]! - droppedTcp0, tcpDrops, 'and dropped exactly the short ones and the responses');

  // TCP, lying: length prefixes that overstate or understate, random streams, connections cut mid-frame.
  const good = (id: number): Buffer => frame(buildQuery('www.example.com', { id }));
  const scripts: Array<{ what: string; run: (s: net.Socket, answers: () => number) => Promise<void>; minAnswers: number }> = [];
  for (let i = 0; i < 6; i++) {
    scripts.push({
      what: 'prefix longer than the message, then FIN',
      minAnswers: 5,
      run: async (s, answers) => {
        s.write(Buffer.concat(Array.from({ length: 5 }, (_, k) => good(k))));
        await until(() => answers() >= 5, 3000);
        const m = fuzz.validQuery(99);
        const f = frame(m);
        f.writeUInt16BE(m.length + 1 + fuzz.int(500), 0);
        s.end(f);
      },
    });
    scripts.push({
      what: 'prefix shorter than the message: the rest is read as frames',
      minAnswers: 0,
      run: async (s) => {
        const parts: Buffer[] = [];
        for (let k = 0; k < 20; k++) {
          const f = frame(fuzz.validQuery(k));
          f.writeUInt16BE(Math.max(0, f.length - 2 - 1 - fuzz.int(20)), 0);
          parts.push(f);
        }
        s.write(Buffer.concat(parts));
        await sleep(100);
        s.end();
      },
    });
    scripts.push({
      what: 'random byte stream',
      minAnswers: 0,
      run: async (s) => {
        for (let k = 0; k < 4; k++) {
          s.write(fuzz.bytes(1 + fuzz.int(2000)));
          await sleep(5);
        }
        await sleep(100);
        s.end();
      },
    });
    scripts.push({
      what: 'zero-length frames, then a good one',
      minAnswers: 1,
      run: async (s, answers) => {
        s.write(Buffer.concat([Buffer.alloc(2 * (1 + fuzz.int(50))), good(1)]));
        await until(() => answers() >= 1, 3000);
        s.end();
      },
    });
    scripts.push({
      what: 'cut mid-prefix',
      minAnswers: 0,
      run: async (s) => {
        s.write(Buffer.from([0]));
        await sleep(10);
        s.destroy();
      },
    });
    scripts.push({
      what: 'cut mid-frame (RST)',
      minAnswers: 0,
      run: async (s) => {
        const f = Buffer.concat([good(1), good(2)]);
        s.write(f.subarray(0, f.length - 1 - fuzz.int(10)));
        await sleep(10);
        s.resetAndDestroy();
      },
    });
    scripts.push({
      what: 'cut mid-frame (FIN)',
      minAnswers: 0,
      run: async (s) => {
        const f = good(3);
        s.end(f.subarray(0, 2 + fuzz.int(f.length - 2)));
      },
    });
    scripts.push({
      what: 'prefix 65535 with a few bytes behind it, then cut',
      minAnswers: 0,
      run: async (s) => {
        s.write(Buffer.concat([Buffer.from([0xff, 0xff]), fuzz.bytes(1 + fuzz.int(600))]));
        await sleep(20);
        s.destroy();
      },
    });
  }
  const liars = await Promise.all(scripts.map((sc) => tcpLiar(a.target, sc.run)));
  let liarAnswers = 0;
  scripts.forEach((sc, i) => {
    const r = liars[i]!;
    liarAnswers += r.answers;
    if (r.failures.length > 0) t.fail(`${sc.what}: ${r.failures.join('; ')}`);
    if (!r.closed) t.fail(`${sc.what}: connection still open after 5 s`);
    if (r.answers < sc.minAnswers) t.fail(`${sc.what}: ${r.answers} answers, expected at least ${sc.minAnswers}`);
  });
  t.pass(`${scripts.length} misbehaving TCP connections: answers well-formed, connections closed (${liarAnswers} answers)`);
  t.ok(await until(() => tcpListener.connections === 0, 3000), `no client connection left open (${tcpListener.connections})`);

  // The agent is fine: right answers over both transports.
  await drained();
  const u = await udpQuery(a.target, 'web.default.svc.cluster.local', { id: 4242 });
  t.equal(u.id, 4242);
  t.same(dataOf(u), ['10.96.1.10'], 'UDP answer after the fuzz');
  const tc = await tcpQuery(a.target, 'www.example.com');
  t.same(dataOf(tc), ['192.0.2.80'], 'TCP answer after the fuzz');
  const big = await tcpQuery(a.target, 'big.example.com');
  t.equal(big.answers?.length, 30, 'a large answer over TCP after the fuzz');

  // Every query is accounted for: dropped, or answered exactly once.
  await drained();
  const requests = counters[ServerCounter.requestsUdp]! + counters[ServerCounter.requestsTcp]!;
  const answers = sum(ServerCounter.rcode0, ServerCounter.rcodeOther);
  t.equal(a.agent.hitPath.inflight, 0, 'nothing left in flight');
  t.equal(requests, counters[ServerCounter.dropped]! + answers, `requests (${requests}) = dropped + answered`);
  t.ok(counters[ServerCounter.requestsUdp]! >= udp.sent - rcvbufLost, 'UDP counter shows the traffic');
  t.ok(counters[ServerCounter.requestsTcp]! >= tcpSent + 300, 'TCP counter shows the traffic');
  t.ok(counters[ServerCounter.misses]! > 0 && counters[ServerCounter.truncated]! > 0, 'queries were forwarded and some answers truncated');

  // Caches stay within their capacities; the negative one was pushed past it (evictions), the positive one holds the few names with data.
  const cache = a.agent.cache;
  t.ok(cache.positiveSize > 0 && cache.positiveSize <= CACHE_SIZE, `positive cache ${cache.positiveSize} <= ${CACHE_SIZE}`);
  t.ok(cache.negativeSize > 0 && cache.negativeSize <= NEGATIVE_CACHE_SIZE, `negative cache ${cache.negativeSize} <= ${NEGATIVE_CACHE_SIZE}`);
  t.ok(cache.counters.get('evictNegative') > 0, `negative entries evicted at capacity (${cache.counters.get('evictNegative')})`);

  // Memory. The agent runs in this process, so RSS also holds the test's own
  // bookkeeping, both fake upstreams and V8's heap slack (GC is usually not
  // ours to force). After warm-up the caches are full and every code path is
  // compiled; what the agent may keep per query is bounded by the caches and
  // the in-flight map, both back to their steady size here. 64 MiB is far
  // above the few MiB of honest noise, and far below what a leak of even a
  // few KiB per query over these ~16,000 queries would add.
  const rssEnd = rss();
  const grew = rssEnd - rssWarm;
  t.comment(`rss after warm-up ${(rssWarm / 2 ** 20).toFixed(1)} MiB, after the run ${(rssEnd / 2 ** 20).toFixed(1)} MiB (gc ${typeof (globalThis as { gc?: unknown }).gc === 'function' ? 'forced' : 'not available'})`);
  t.ok(grew < 64 * 2 ** 20, `RSS grew ${(grew / 2 ** 20).toFixed(1)} MiB (< 64 MiB)`);
});
