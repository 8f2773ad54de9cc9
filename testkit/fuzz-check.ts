// What a fuzzed agent must do with each packet, checked from the client's
// side; shared by test/fuzz.test.ts and `npm run fuzz` (bench/fuzz.ts).
// Every answer is decoded (dns-packet, never the agent's own parser) and held
// to the rules the agent promises whatever else is wrong with the query.
import * as dnsPacket from 'dns-packet';
import { performance } from 'node:perf_hooks';
import { questionNameEnd } from './fuzz-gen.js';

const rcodeOf = (b: Buffer): number => b[3]! & 0xf;
const opcodeOf = (b: Buffer): number => (b[2]! >> 3) & 0xf;

/** The agent's --max-udp-size default (DNS Flag Day 2020). */
export const MAX_UDP_SIZE = 1232;

/**
 * The largest UDP answer the client that sent `q` accepts: 512 without EDNS,
 * else its advertised size (at least 512) capped by ours (RFC 6891 6.2.5). A
 * query dns-packet cannot read (so its OPT is unknown) is allowed the cap.
 */
export function clientUdpLimit(q: Buffer, maxUdpSize = MAX_UDP_SIZE): number {
  if (q.length >= 12 && q.readUInt16BE(10) === 0) return 512;
  const opt = queryOpt(q);
  if (opt === null) return maxUdpSize;
  if (opt === undefined) return 512;
  const size = Math.max(512, opt.udpPayloadSize);
  return Math.min(size, maxUdpSize);
}

/** `q`'s OPT as dns-packet reads it: undefined when it has none, null when dns-packet cannot read `q` (its OPT is unknown). */
function queryOpt(q: Buffer): dnsPacket.OptAnswer | undefined | null {
  try {
    return (dnsPacket.decode(q).additionals ?? []).find((a): a is dnsPacket.OptAnswer => a.type === 'OPT');
  } catch {
    return null;
  }
}

/** Whether `q` carries an OPT of a version other than 0; null when its OPT is unknown. */
function laterEdnsVersion(q: Buffer): boolean | null {
  const opt = queryOpt(q);
  return opt === null ? null : opt !== undefined && opt.ednsVersion !== 0;
}

/**
 * Checks one answer against the query that provoked it (or, with no query,
 * only its form). Returns what is wrong, or null.
 */
export function checkAnswer(ans: Buffer, q: Buffer | null, transport: 'udp' | 'tcp', maxUdpSize = MAX_UDP_SIZE): string | null {
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
  // A query of another opcode is not read as a question: its NOTIMP, or BADVERS (extended rcode 1), echoes none.
  const badVersOfOpcode = ext === 1 && rcode === 0 && q !== null && opcodeOf(q) !== 0;
  if (qd === 0 && rcode !== 1 && rcode !== 4 && !badVersOfOpcode) return `no question in a rcode ${rcode} answer`;
  if (transport === 'udp' && ans.length > maxUdpSize) return `UDP answer of ${ans.length} bytes over --max-udp-size`;
  if (q === null) return null;
  if (ans.readUInt16BE(0) !== q.readUInt16BE(0)) return 'id differs';
  if (opcodeOf(ans) !== opcodeOf(q)) return `opcode ${opcodeOf(ans)} for a query with opcode ${opcodeOf(q)}`;
  // Rules the agent must apply whatever else is wrong with the packet, in this order.
  // BADVERS instead when the query is at a later EDNS version (RFC 6891 6.1.3), which a query dns-packet cannot read may be.
  if (opcodeOf(q) !== 0 && rcode !== 4 && !(ext === 1 && rcode === 0 && laterEdnsVersion(q) !== false)) {
    return `opcode ${opcodeOf(q)} answered rcode ${rcode}, not NOTIMP`;
  }
  if (opcodeOf(q) === 0 && q.readUInt16BE(4) !== 1 && rcode !== 1) return `QDCOUNT ${q.readUInt16BE(4)} answered rcode ${rcode}, not FORMERR`;
  // Only an answer over 512 needs the client's limit read from its query (a decode: keep the common case cheap).
  if (transport === 'udp' && ans.length > 512) {
    const limit = clientUdpLimit(q, maxUdpSize);
    if (ans.length > limit) return `${ans.length}-byte UDP answer to a client whose limit is ${limit}`;
  }
  if (qd === 1) {
    // The question is echoed byte for byte (the client's case included).
    const end = questionNameEnd(ans);
    if (end < 0 || end + 4 > ans.length) return 'answer question unreadable';
    if (end + 4 > q.length || !ans.subarray(12, end + 4).equals(q.subarray(12, end + 4))) return 'question not echoed';
  }
  return null;
}

const NONE = 0;
const MUST_DROP = 1;
const ANSWERED = 2;

/**
 * Queries sent on one channel (a UDP socket, or one TCP connection), matched
 * to answers by id. An id may be used again once its query is no longer owed
 * (a million packets through 65,536 ids): an answer is then held against the
 * id's latest use.
 */
export class Ledger {
  /** id -> query still owed an answer. */
  readonly owed = new Map<number, { q: Buffer; kind: string; at: number }>();
  /** Per id: nothing, must get no answer (QR=1), or answered. */
  readonly #state = new Uint8Array(65536);
  /** Packets the agent must drop, counted (including those too short to carry an id). */
  drops = 0;
  sent = 0;
  answers = 0;
  readonly rcodes = new Map<number, number>();
  readonly failures: string[] = [];
  failureCount = 0;
  /** Answers over the client's UDP limit (also failures). */
  oversized = 0;
  /** Answers to packets that must be dropped (also failures). */
  answeredDrops = 0;
  readonly transport: 'udp' | 'tcp';
  readonly #maxUdpSize: number;

  constructor(transport: 'udp' | 'tcp', maxUdpSize = MAX_UDP_SIZE) {
    this.transport = transport;
    this.#maxUdpSize = maxUdpSize;
  }

  /** Whether `id` can carry a new query (nothing owed on it). */
  free(id: number): boolean {
    return !this.owed.has(id);
  }

  add(q: Buffer, kind: string): void {
    this.sent++;
    if (q.length < 12 || (q[2]! & 0x80) !== 0) {
      this.drops++;
      if (q.length >= 2) {
        const id = q.readUInt16BE(0);
        if (this.owed.has(id)) throw new Error(`test bug: id ${id} reused while owed`);
        this.#state[id] = MUST_DROP;
      }
      return;
    }
    const id = q.readUInt16BE(0);
    if (this.owed.has(id)) throw new Error(`test bug: id ${id} reused while owed`);
    this.#state[id] = NONE;
    this.owed.set(id, { q, kind, at: performance.now() });
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
      const st = this.#state[id];
      if (st === MUST_DROP) {
        this.answeredDrops++;
        return this.fail(`id ${id}: answered a packet that must be dropped`);
      }
      if (st === ANSWERED) return this.fail(`id ${id}: second answer`);
      return this.fail(`id ${id}: answer to nothing we sent`);
    }
    this.owed.delete(id);
    this.#state[id] = ANSWERED;
    const bad = checkAnswer(ans, owed.q, this.transport, this.#maxUdpSize);
    if (bad !== null) {
      if (/limit|max-udp-size|without EDNS/.test(bad)) this.oversized++;
      this.fail(`id ${id} (${owed.kind}, query ${owed.q.toString('hex').slice(0, 120)}): ${bad}`);
    }
  }
}
