/**
 * Checks that an upstream answer belongs to the query we sent: used by every
 * upstream transport before it accepts an answer (anti-spoofing, and a guard
 * against an upstream that mixes up pipelined answers).
 */
import { FLAG_QR, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT, OPCODE_MASK, RCODE_MASK, Rcode } from './constants.js';
import { namesEqualCI, skipUncompressedName } from './name.js';

/**
 * True when `answer` is a response (QR=1) with the query's opcode, exactly one
 * question, and that question equals the query's (name case-insensitively,
 * type and class exactly). Ids are the transport's business and are not compared.
 */
export function answerMatchesQuery(query: Uint8Array, answer: Uint8Array): boolean {
  if (answer.length < HEADER_LEN || query.length < HEADER_LEN) return false;
  const aFlags = (answer[OFF_FLAGS]! << 8) | answer[OFF_FLAGS + 1]!;
  const qFlags = (query[OFF_FLAGS]! << 8) | query[OFF_FLAGS + 1]!;
  if ((aFlags & FLAG_QR) === 0) return false;
  if ((aFlags & OPCODE_MASK) !== (qFlags & OPCODE_MASK)) return false;
  if (answer[OFF_QDCOUNT] !== 0 || answer[OFF_QDCOUNT + 1] !== 1) return false;
  const qEnd = skipUncompressedName(query, HEADER_LEN);
  if (qEnd < 0 || qEnd + 4 > query.length) return false;
  const nameLen = qEnd - HEADER_LEN;
  // The answer's question must be uncompressed too: it comes first, so a pointer could only point into the header.
  const aEnd = skipUncompressedName(answer, HEADER_LEN);
  if (aEnd - HEADER_LEN !== nameLen || aEnd + 4 > answer.length) return false;
  if (!namesEqualCI(query, HEADER_LEN, answer, HEADER_LEN, nameLen)) return false;
  for (let i = 0; i < 4; i++) if (query[qEnd + i] !== answer[aEnd + i]) return false;
  return true;
}

/**
 * True when `answer` is FORMERR with no question and no records, a response with the query's opcode, to a query
 * that carried additional records (our OPT): what some servers from before EDNS answer it. It cannot be checked
 * against the question, so it is no answer to pass on; a transport that takes it (source and id matched) takes it
 * only as the reason to ask again without OPT (RFC 6891 7).
 */
export function questionlessFormerr(query: Uint8Array, answer: Uint8Array): boolean {
  if (answer.length < HEADER_LEN || query.length < HEADER_LEN || count(query, OFF_ARCOUNT) === 0) return false;
  const aFlags = (answer[OFF_FLAGS]! << 8) | answer[OFF_FLAGS + 1]!;
  const qFlags = (query[OFF_FLAGS]! << 8) | query[OFF_FLAGS + 1]!;
  if ((aFlags & FLAG_QR) === 0 || (aFlags & OPCODE_MASK) !== (qFlags & OPCODE_MASK) || (aFlags & RCODE_MASK) !== Rcode.FORMERR) return false;
  return count(answer, OFF_QDCOUNT) === 0 && count(answer, OFF_ANCOUNT) === 0 && count(answer, OFF_NSCOUNT) === 0 && count(answer, OFF_ARCOUNT) === 0;
}

const count = (msg: Uint8Array, off: number): number => (msg[off]! << 8) | msg[off + 1]!;

export function readId(msg: Uint8Array): number {
  return (msg[0]! << 8) | msg[1]!;
}

export function writeId(msg: Uint8Array, id: number): void {
  msg[0] = (id >>> 8) & 0xff;
  msg[1] = id & 0xff;
}
