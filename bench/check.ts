/**
 * The answer checker: decodes just enough of a response (flags, question,
 * answer rdata of the asked type) to tell whether it is what the simulator
 * serves for that name. Returns a verdict code; never throws and never
 * allocates on the success path.
 */
import { Zone, addressCount, hashWireName, writeAddress, RCODE_NOERROR } from './sim/zones.js';
import { HEADER_LEN, UNIQUE_WIDTH, uniqueDigit, type QueryTemplate } from './wire.js';

/** Why an answer was wrong. Index into counters; keep in sync with VERDICT_NAMES. */
export const Verdict = {
  OK: 0,
  /** Not a response, malformed, or cut short. */
  MALFORMED: 1,
  /** TC set: the generator does not retry over TCP, and no answer here needs it. */
  TRUNCATED: 2,
  /** The question section is not the one asked. */
  QUESTION: 3,
  /** SERVFAIL where the zone has an answer (upstream trouble inside the target). */
  SERVFAIL: 4,
  /** Any other rcode than the zone's. */
  RCODE: 5,
  /** Right rcode, wrong or missing addresses. */
  DATA: 6,
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];
export const VERDICT_NAMES = ['ok', 'malformed', 'truncated', 'question', 'servfail', 'rcode', 'data'] as const;
export type WrongReason = Exclude<(typeof VERDICT_NAMES)[number], 'ok'>;

const scratch = new Uint8Array(16 * 4);
const matched = new Uint8Array(4);

function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

/** Skips a possibly compressed name; returns the offset after it or -1. */
function skipName(msg: Buffer, off: number): number {
  let i = off;
  for (let guard = 0; guard < 128; guard++) {
    if (i >= msg.length) return -1;
    const len = msg[i] ?? 0;
    if (len === 0) return i + 1;
    if ((len & 0xc0) === 0xc0) return i + 2 <= msg.length ? i + 2 : -1;
    if (len > 63) return -1;
    i += len + 1;
  }
  return -1;
}

/**
 * Checks `msg` against the template it answers. `unique` is the counter
 * written into unique names (ignored for the others). Case in the echoed
 * question is ignored (0x20 randomisation, case-preserving caches).
 */
export function checkResponse(msg: Buffer, t: QueryTemplate, unique: number): Verdict {
  if (msg.length < t.questionEnd) return Verdict.MALFORMED;
  const flags = (msg[2] ?? 0) << 8 | (msg[3] ?? 0);
  if ((flags & 0x8000) === 0 || (flags & 0x7800) !== 0) return Verdict.MALFORMED;
  if ((flags & 0x0200) !== 0) return Verdict.TRUNCATED;
  if (msg.readUInt16BE(4) !== 1) return Verdict.QUESTION;
  const w = t.wire;
  const uo = t.uniqueOffset;
  for (let i = HEADER_LEN; i < t.questionEnd; i++) {
    const want = uo >= 0 && i >= uo && i < uo + UNIQUE_WIDTH ? uniqueDigit(unique, i - uo) : (w[i] ?? 0);
    if (lower(msg[i] ?? 0) !== want) return Verdict.QUESTION;
  }
  const rcode = flags & 0x000f;
  if (rcode !== t.rcode) return rcode === 2 ? Verdict.SERVFAIL : Verdict.RCODE;
  if (rcode !== RCODE_NOERROR) return Verdict.OK;

  const hash = t.hash >= 0 ? t.hash : hashWireName(msg, HEADER_LEN);
  if (hash < 0) return Verdict.MALFORMED;
  const zone: Zone = t.zone;
  const want = addressCount(zone, hash);
  const rdlen = t.qtype === 1 ? 4 : 16;
  for (let k = 0; k < want; k++) {
    writeAddress(zone, t.qtype, hash, k, scratch, k * 16);
    matched[k] = 0;
  }
  let found = 0;
  let off = t.questionEnd;
  const ancount = msg.readUInt16BE(6);
  for (let r = 0; r < ancount; r++) {
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return Verdict.MALFORMED;
    const type = msg.readUInt16BE(off);
    const klass = msg.readUInt16BE(off + 2);
    const len = msg.readUInt16BE(off + 8);
    off += 10;
    if (off + len > msg.length) return Verdict.MALFORMED;
    if (type === t.qtype && klass === 1) {
      if (len !== rdlen) return Verdict.DATA;
      let hit = -1;
      for (let k = 0; k < want && hit < 0; k++) {
        if (matched[k] === 0 && msg.compare(scratch, k * 16, k * 16 + rdlen, off, off + rdlen) === 0) hit = k;
      }
      if (hit < 0) return Verdict.DATA;
      matched[hit] = 1;
      found++;
    }
    off += len;
  }
  return found === want ? Verdict.OK : Verdict.DATA;
}

/**
 * The smallest TTL among the answer records of `msg` (whose question section
 * ends at `questionEnd`, as in the template it answers), or -1 when it has
 * none or is malformed. The fallback workload tells answers from the agent's
 * view (TTL at most --local-ttl) from answers kube-dns gave (TTL up to the
 * zone's) by it.
 */
export function answerTtl(msg: Buffer, questionEnd: number): number {
  if (msg.length < 12 || msg.length < questionEnd) return -1;
  const ancount = msg.readUInt16BE(6);
  let off = questionEnd;
  let min = -1;
  for (let r = 0; r < ancount; r++) {
    off = skipName(msg, off);
    if (off < 0 || off + 10 > msg.length) return -1;
    const ttl = msg.readUInt32BE(off + 4);
    const len = msg.readUInt16BE(off + 8);
    off += 10 + len;
    if (off > msg.length) return -1;
    if (min < 0 || ttl < min) min = ttl;
  }
  return min;
}
