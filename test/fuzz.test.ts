// Bad input never hurts the agent: 100,000 random and structure-aware
// mutated packets (testkit/fuzz-gen.ts: lying counts, compression loops and
// forward pointers, labels past the end, OPT in the wrong section or twice,
// huge option lengths, every opcode, QR=1, empty questions) over UDP and TCP
// (honest framing in random-sized writes, zero-length frames, and lying
// length prefixes, length 65535, connections cut mid-frame). Every answer
// must be a well-formed response to the packet that provoked it and no larger
// than the client's limit (testkit/fuzz-check.ts); nothing that must be
// dropped is answered; every query is accounted for; and afterwards the agent
// still answers, its caches are within their capacities and its memory did
// not run away. `npm run fuzz` runs the same generator and checks for a
// million packets against the agent as its own process.
// Replay a failure with FUZZ_SEED=<seed printed in the comment>.
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { createLogger } from '../src/log.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { TcpListener } from '../src/server/tcp-listener.js';
import { checkAnswer } from '../testkit/fuzz-check.js';
import {
  closeUdpChannels, fuzzUpstreams, liarScripts, openUdpChannels, tcpHonest, tcpLiar, tcpPayloads, udpFuzz, udpRcvbufErrors, until,
} from '../testkit/fuzz-drive.js';
import { Fuzz } from '../testkit/fuzz-gen.js';
import { exposeGc } from '../src/ops/idle-gc.js';
import { startAgent, type TestAgent } from './helpers/agent.js';
import { buildQuery, tcpQuery, udpExchange, udpQuery } from './helpers/dns-client.js';

/** An address of this file's own (test/bench.test.ts has 127.0.30.1). */
const HOST = '127.0.35.1';
const SEED = (process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : Date.now()) >>> 0;
const CACHE_SIZE = 64;
const NEGATIVE_CACHE_SIZE = 256;
/** The whole run: warm-up, UDP, honest TCP frames, lying TCP connections. */
const WARM_UDP = 3000;
const WARM_TCP = 500;
const UDP_PACKETS = 84_500;
const TCP_CONNECTIONS = 12;
const TCP_PER_CONNECTION = 1000;
const LIAR_ROUNDS = 2;
/** Client UDP sockets the packets are spread over (ids per socket stay unique). */
const UDP_SOCKETS = 4;

const rcodeOf = (b: Buffer): number => b[3]! & 0xf;
const dataOf = (p: dnsPacket.DecodedPacket): unknown[] => (p.answers ?? []).map((a) => (a as { data?: unknown }).data);

async function sims(t: { teardown(fn: () => unknown): void }) {
  const u = await fuzzUpstreams();
  t.teardown(() => u.close());
  return ['--upstream-addr', `127.0.0.1:${u.cluster.port}`, '--upstream-nameservers', `127.0.0.1:${u.external.port}`];
}

t.comment(`fuzz seed ${SEED} (replay with FUZZ_SEED=${SEED})`);

t.test('hand-made bad packets get the precise treatment', async (t) => {
  const logLines: string[] = [];
  const a = await startAgent(HOST, [...(await sims(t)), '--query-log-sample', '1'], { logger: createLogger('info', (line) => logLines.push(line)) });
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
    // An option that claims more than the OPT holds is a badly formatted OPT: FORMERR (RFC 6891 7), as BIND and CoreDNS.
    { what: 'OPT option length 65535 inside an honest rdlength', msg: withAdditional(q(25), opt([0], 0, 6, [0, 10, 0xff, 0xff, 1, 2])), rcode: 1, question: true },
    { what: 'OPT in the answer section', msg: set16(Buffer.concat([q(26), opt([0])]), 6, 1), rcode: 1, question: true },
    { what: 'OPT in the authority section', msg: set16(Buffer.concat([q(27), opt([0])]), 8, 1), rcode: 1, question: true },
    { what: 'answer record owned by a forward pointer', msg: set16(Buffer.concat([q(28), Buffer.from([0xc0, at + 20, 0, 1, 0, 1, 0, 0, 0, 60, 0, 0])]), 6, 1), rcode: 1, question: true },
    { what: 'QDCOUNT=1, header only', msg: set16(q(29).subarray(0, 12), 4, 1), rcode: 1, question: false },
    { what: 'QDCOUNT=1, only the root label', msg: Buffer.concat([set16(q(31).subarray(0, 12), 4, 1), Buffer.from([0])]), rcode: 1, question: false },
  ];
  const results = await Promise.all(cases.map((c) => udpExchange(a.target, c.msg, c.rcode === null ? 400 : 2000)));
  cases.forEach((c, i) => {
    const ans = results[i]!;
    if (c.rcode === null) {
      t.equal(ans, null, `${c.what}: no answer`);
      return;
    }
    if (ans === null) return t.fail(`${c.what}: no answer`);
    if (c.rcode >= 0) t.equal(rcodeOf(ans), c.rcode, `${c.what}: rcode ${c.rcode}`);
    else t.comment(`${c.what}: answered rcode ${rcodeOf(ans)}`);
    t.equal(checkAnswer(ans, c.msg, 'udp'), null, `${c.what}: well-formed, id ${c.msg.readUInt16BE(0)}`);
    t.equal(ans.readUInt16BE(4), c.question === true ? 1 : 0, `${c.what}: question ${c.question === true ? 'echoed' : 'absent'}`);
  });
  // EDNS version 1: BADVERS (extended rcode 16 = 1 in the OPT, 0 in the header), question echoed, our OPT at version 0.
  const v1 = withAdditional(q(30), opt([0], 1));
  const responses = async (): Promise<Record<string, number>> => {
    const out: Record<string, number> = {};
    for (const m of (await a.agent.metrics.metrics()).matchAll(/^coredns_dns_responses_total\{[^}]*rcode="([^"]+)"[^}]*\} (\S+)$/gm)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    return out;
  };
  const before = await responses();
  const bv = await udpExchange(a.target, v1);
  const after = await responses();
  t.equal(after['NOERROR'], before['NOERROR'], 'BADVERS is not counted as a NOERROR answer (its header rcode bits are 0)');
  t.equal(after['other'], (before['other'] ?? 0) + 1, 'BADVERS is counted under rcode "other"');
  const logged = logLines.map((l) => JSON.parse(l) as { msg: string; source?: string; rcode?: number }).filter((l) => l.msg === 'query' && l.source === 'refused-query');
  t.equal(logged.at(-1)?.rcode, 16, 'the query log names the full rcode, BADVERS (16), not the header\'s 0');
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

t.test(`fuzz: 100,000 random and mutated packets over UDP and TCP (seed ${SEED})`, async (t) => {
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
  const chs = await openUdpChannels(a.target, UDP_SOCKETS);
  t.teardown(() => closeUdpChannels(chs));
  const udpSum = (f: (c: (typeof chs)[number]) => number): number => chs.reduce((n, c) => n + f(c), 0);
  // A full collection before each reading (gc() without --expose-gc: the agent's own idle-gc.ts way): without one,
  // the reading was whatever garbage the run happened to leave, from -45 to +67 MiB across runs of one build.
  const gc = exposeGc();
  const rss = (): number => {
    gc?.();
    return process.memoryUsage().rss;
  };
  const sum = (from: number, to: number): number => {
    let s = 0;
    for (let i = from; i <= to; i++) s += counters[i]!;
    return s;
  };
  // With --timeout 500ms every query has its answer (SERVFAIL at worst) well within 3 s.
  const quiet = (): Promise<boolean> => until(() => a.agent.hitPath.inflight === 0, 3000, 20);
  const rcvbufBefore = udpRcvbufErrors();

  // Warm-up: the same code paths, so JIT, buffer pools and the caches (which fill here) are not counted as growth.
  const warm = await udpFuzz(a.target, fuzz, chs, WARM_UDP);
  const warmTcp = await tcpHonest(a.target, fuzz, tcpPayloads(fuzz, WARM_TCP));
  t.equal(warmTcp.failureCount, 0, `warm-up TCP: ${warmTcp.failures.join('; ')}`);
  await quiet();
  const rssWarm = rss();

  // UDP: the counters move by exactly what we sent and what must be dropped.
  const reqUdp0 = counters[ServerCounter.requestsUdp]!;
  const dropped0 = counters[ServerCounter.dropped]!;
  const sent0 = udpSum((c) => c.ledger.sent);
  const drops0 = udpSum((c) => c.ledger.drops);
  const udpRun = await udpFuzz(a.target, fuzz, chs, UDP_PACKETS);
  await quiet();
  await new Promise((r) => setTimeout(r, 100)); // a stray late or duplicate answer would show up here
  const rcvbufLost = udpRcvbufErrors() - rcvbufBefore;
  const unanswered = warm.unanswered + udpRun.unanswered;
  const rcodes = new Map<number, number>();
  for (const c of chs) for (const [k, v] of c.ledger.rcodes) rcodes.set(k, (rcodes.get(k) ?? 0) + v);
  const udpSent = udpSum((c) => c.ledger.sent);
  t.comment(`UDP: ${udpSent} packets, ${udpSum((c) => c.ledger.answers)} answers, rcodes ${JSON.stringify(Object.fromEntries(rcodes))}, ${udpSum((c) => c.ledger.drops)} to drop, kernel receive-buffer drops ${rcvbufLost}`);
  for (const u of [...warm.unansweredSamples, ...udpRun.unansweredSamples].slice(0, 5)) t.comment(`unanswered: ${u}`);
  t.ok(udpSent >= WARM_UDP + UDP_PACKETS, `${udpSent} UDP packets sent`);
  t.equal(udpSum((c) => c.ledger.failureCount), 0, 'every UDP answer well-formed, within the client\'s size limit and matching its query');
  t.same(chs.flatMap((c) => c.ledger.failures).slice(0, 10), [], 'first UDP failures');
  t.equal(udpSum((c) => c.ledger.answeredDrops), 0, 'no answer to a response (QR=1) or a short packet');
  t.equal(udpSum((c) => c.strangers), 0, 'no datagram from anywhere but the agent\'s address');
  if (rcvbufLost === 0) {
    t.equal(unanswered, 0, 'every UDP query that deserves an answer got one');
    t.equal(counters[ServerCounter.requestsUdp]! - reqUdp0, udpSent - sent0, 'the agent saw every datagram');
    t.equal(counters[ServerCounter.dropped]! - dropped0, udpSum((c) => c.ledger.drops) - drops0, 'and dropped exactly the short ones and the responses');
  } else {
    // The kernel says it lost datagrams (somewhere in this namespace): only bound the missing answers by that.
    t.ok(unanswered <= rcvbufLost, `${unanswered} unanswered <= ${rcvbufLost} datagrams the kernel dropped`);
  }
  t.ok((rcodes.get(1) ?? 0) > 1000 && (rcodes.get(4) ?? 0) > 1000 && (rcodes.get(3) ?? 0) > 1000, 'the mix provoked FORMERR, NOTIMP and NXDOMAIN alike');

  // TCP, honest framing: fuzz payloads (zero-length frames among them) answered in any order, a few connections at a time.
  const reqTcp0 = counters[ServerCounter.requestsTcp]!;
  const droppedTcp0 = counters[ServerCounter.dropped]!;
  const honest = [];
  for (let i = 0; i < TCP_CONNECTIONS; i += 4) {
    honest.push(...(await Promise.all(Array.from({ length: 4 }, () => tcpHonest(a.target, fuzz, tcpPayloads(fuzz, TCP_PER_CONNECTION), 15_000)))));
  }
  const tcpSent = honest.reduce((n, l) => n + l.sent, 0);
  const tcpDrops = honest.reduce((n, l) => n + l.drops, 0);
  t.comment(`TCP honest: ${tcpSent} frames on ${honest.length} connections, ${honest.reduce((n, l) => n + l.answers, 0)} answers, ${tcpDrops} to drop`);
  t.same(honest.flatMap((l) => l.failures).slice(0, 10), [], 'every TCP answer well-formed and matching its query');
  t.same(honest.map((l) => l.owed.size), honest.map(() => 0), 'every TCP query that deserves an answer got one');
  t.equal(counters[ServerCounter.requestsTcp]! - reqTcp0, tcpSent, 'the agent saw every frame');
  t.equal(counters[ServerCounter.dropped]! - droppedTcp0, tcpDrops, 'and dropped exactly the short ones and the responses');

  // TCP, lying: prefixes that overstate or understate, random streams, length 0 and 65535, connections cut mid-frame.
  let liarAnswers = 0;
  let liarConns = 0;
  for (let round = 0; round < LIAR_ROUNDS * 3; round++) {
    const scripts = liarScripts(fuzz);
    const liars = await Promise.all(scripts.map((sc) => tcpLiar(a.target, sc.run)));
    scripts.forEach((sc, i) => {
      const r = liars[i]!;
      liarConns++;
      liarAnswers += r.answers;
      if (r.failures.length > 0) t.fail(`${sc.what}: ${r.failures.join('; ')}`);
      if (!r.closed) t.fail(`${sc.what}: connection still open after 5 s`);
      if (r.answers < sc.minAnswers) t.fail(`${sc.what}: ${r.answers} answers, expected at least ${sc.minAnswers}`);
    });
  }
  t.pass(`${liarConns} misbehaving TCP connections: answers well-formed, connections closed (${liarAnswers} answers)`);
  t.ok(await until(() => tcpListener.connections === 0, 3000, 20), `no client connection left open (${tcpListener.connections})`);
  t.comment(`packets in all: ${udpSent + tcpSent + WARM_TCP} (+ ${liarConns} lying connections)`);

  // The agent is fine: right answers over both transports.
  await quiet();
  const u = await udpQuery(a.target, 'web.default.svc.cluster.local', { id: 4242 });
  t.equal(u.id, 4242);
  t.same(dataOf(u), ['10.96.1.10'], 'UDP answer after the fuzz');
  const tc = await tcpQuery(a.target, 'www.example.com');
  t.same(dataOf(tc), ['192.0.2.80'], 'TCP answer after the fuzz');
  const big = await tcpQuery(a.target, 'big.example.com');
  t.equal(big.answers?.length, 30, 'a large answer over TCP after the fuzz');
  const bigUdp = await udpExchange(a.target, buildQuery('big.example.com', { id: 77 }));
  t.ok(bigUdp !== null && bigUdp.length <= 512 && (bigUdp[2]! & 0x02) !== 0, 'and over UDP without EDNS: at most 512 bytes, TC=1');

  // Every query is accounted for: dropped, or answered exactly once.
  await quiet();
  const requests = counters[ServerCounter.requestsUdp]! + counters[ServerCounter.requestsTcp]!;
  const answers = sum(ServerCounter.rcode0, ServerCounter.rcodeOther);
  t.equal(a.agent.hitPath.inflight, 0, 'nothing left in flight');
  t.equal(requests, counters[ServerCounter.dropped]! + answers, `requests (${requests}) = dropped + answered`);
  t.ok(counters[ServerCounter.requestsUdp]! >= udpSent - rcvbufLost, 'UDP counter shows the traffic');
  t.ok(counters[ServerCounter.requestsTcp]! >= tcpSent + WARM_TCP, 'TCP counter shows the traffic');
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
  // few hundred bytes per query over these ~100,000 packets would add.
  const rssEnd = rss();
  const grew = rssEnd - rssWarm;
  t.comment(`rss after warm-up ${(rssWarm / 2 ** 20).toFixed(1)} MiB, after the run ${(rssEnd / 2 ** 20).toFixed(1)} MiB (gc ${gc === null ? 'not available' : 'forced'})`);
  t.ok(grew < 64 * 2 ** 20, `RSS grew ${(grew / 2 ** 20).toFixed(1)} MiB (< 64 MiB)`);
});
