/**
 * A structured cluster answer (kube/records.ts) as a full DNS response, shaped
 * like an upstream's: id 0, QR AA RD RA, the rcode, the question, the
 * records, no OPT. The cache stores it like any answer from kube-dns and
 * patches id, case and TTLs on every hit. Off the hot path (a fallback
 * answer is built once, then served from the cache), so dns-packet encodes
 * the records.
 */
import dnsPacket from 'dns-packet';
import type { Answer as PacketAnswer } from 'dns-packet';
import { FLAG_AA, FLAG_QR, FLAG_RA, FLAG_RD, HEADER_LEN, MAX_MESSAGE, OFF_FLAGS, OFF_QDCOUNT, QClass } from '../dns/constants.js';
import { skipUncompressedName } from '../dns/name.js';
import type { ClusterAnswer, ClusterRR } from './records.js';

function toPacket(rr: ClusterRR): PacketAnswer {
  return { ...rr, class: 'IN' } as PacketAnswer;
}

/** One record's bytes as dns-packet writes it (names uncompressed). */
function recordLength(rr: ClusterRR): number {
  return dnsPacket.encodingLength({ answers: [toPacket(rr)] }) - HEADER_LEN;
}

/** How many of the first records fit in `room` bytes. */
function recordsWithin(rrs: readonly ClusterRR[], room: number): number {
  let used = 0;
  for (let i = 0; i < rrs.length; i++) {
    used += recordLength(rrs[i]!);
    if (used > room) return i;
  }
  return rrs.length;
}

/** The records' bytes, counted only up to just past `cap` (enough to know they do not fit). */
function wireLength(rrs: readonly ClusterRR[], cap: number): number {
  let used = 0;
  for (let i = 0; i < rrs.length && used <= cap; i++) used += recordLength(rrs[i]!);
  return used;
}

/**
 * `qname` is the question's uncompressed wire name, written back byte for
 * byte (dns-packet's name encoder cannot carry every byte a label may hold).
 * Throws on a malformed `qname`: callers pass the name they already parsed.
 */
export function encodeAnswer(qname: Uint8Array, qtype: number, ans: ClusterAnswer): Buffer {
  const nameEnd = skipUncompressedName(qname, 0);
  if (nameEnd < 0) throw new Error('encodeAnswer: malformed question name');
  // Encode without a question, then splice ours in after the header:
  // dns-packet does not compress names, so no offset needs fixing.
  const encode = (answer: readonly ClusterRR[], additional: readonly ClusterRR[]): Buffer =>
    dnsPacket.encode({
      type: 'response',
      id: 0,
      flags: FLAG_AA | FLAG_RD | FLAG_RA | ans.rcode,
      questions: [],
      answers: answer.map(toPacket),
      authorities: ans.authority.map(toPacket),
      additionals: additional.map(toPacket),
    });
  const room = MAX_MESSAGE - nameEnd - 4;
  // Past the largest DNS message (a headless service with a few thousand endpoints: uncompressed names): the
  // additional records go, then answers from the end. A subset of a service's addresses is still a true answer,
  // and one that fits every transport; a client over UDP gets it cut further, with TC, by the hit path. Measured
  // record by record before anything is encoded: encoding 18,000 records to keep 2,000 took 1.5 s of the main thread.
  const fixed = HEADER_LEN + wireLength(ans.authority, room);
  const whole = wireLength(ans.answer, room - fixed) + wireLength(ans.additional, room);
  let answer = ans.answer;
  let additional = ans.additional;
  if (fixed + whole > room) {
    additional = [];
    answer = answer.slice(0, recordsWithin(answer, room - fixed));
  }
  let body = encode(answer, additional);
  // Only if dns-packet's lengths and ours ever disagree.
  while (body.length > room && answer.length > 0) {
    answer = answer.slice(0, Math.min(answer.length - 1, Math.floor((answer.length * room) / body.length)));
    body = encode(answer, []);
  }
  const out = Buffer.allocUnsafe(body.length + nameEnd + 4);
  body.copy(out, 0, 0, HEADER_LEN);
  out.writeUInt16BE(FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA | ans.rcode, OFF_FLAGS);
  out.writeUInt16BE(1, OFF_QDCOUNT);
  out.set(qname.subarray(0, nameEnd), HEADER_LEN);
  out.writeUInt16BE(qtype, HEADER_LEN + nameEnd);
  out.writeUInt16BE(QClass.IN, HEADER_LEN + nameEnd + 2);
  body.copy(out, HEADER_LEN + nameEnd + 4, HEADER_LEN);
  return out;
}
