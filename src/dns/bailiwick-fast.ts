/**
 * The common case of bailiwick.ts without decoding the message: every
 * answer record owned by the question name, every authority record by the
 * question name or one of its ancestors (a negative answer's SOA), nothing
 * in the additional section but OPT. Then the scrub would remove nothing,
 * and the full decode (dns-packet, a few microseconds to tens per answer,
 * on every miss) is skipped. Anything else, or anything this walk does not
 * follow, answers false: not sure, the full check decides.
 *
 * Names compare as bailiwick.ts compares them: ASCII case folded, with
 * compression pointers followed (real servers compress, the bench's
 * simulator does not).
 */
import { HEADER_LEN } from './constants.js';

const TYPE_OPT = 41;
/** Label boundaries of the question name we keep track of (a name has at most 127 labels). */
const MAX_LABELS = 128;
/** Pointers followed per name at most: more is a loop or an attack. */
const MAX_HOPS = 32;

const bounds = new Int32Array(MAX_LABELS + 1);
const ownerLabels = new Int32Array(MAX_LABELS + 1);

/** True when scrubOutOfBailiwick(msg) would remove nothing, known without decoding; false when unsure. */
export function plainlyInBailiwick(msg: Uint8Array): boolean {
  if (msg.length < HEADER_LEN) return false;
  const qdcount = (msg[4]! << 8) | msg[5]!;
  if (qdcount !== 1) return false;
  const an = (msg[6]! << 8) | msg[7]!;
  const ns = (msg[8]! << 8) | msg[9]!;
  const ar = (msg[10]! << 8) | msg[11]!;
  // The question name, uncompressed (it is the first name): its label starts, then its root.
  let p = HEADER_LEN;
  let m = 0;
  for (;;) {
    if (p >= msg.length || m >= MAX_LABELS) return false;
    const len = msg[p]!;
    if (len === 0) break;
    if (len > 63) return false;
    bounds[m++] = p;
    p += 1 + len;
  }
  bounds[m] = p;
  p += 5;
  if (p > msg.length) return false;
  for (let i = 0; i < an + ns + ar; i++) {
    const owner = readOwner(msg, p, m);
    if (owner < 0) return false;
    const end = ownerEnd;
    if (end + 10 > msg.length) return false;
    const type = (msg[end]! << 8) | msg[end + 1]!;
    const rdlen = (msg[end + 8]! << 8) | msg[end + 9]!;
    if (i < an) {
      if (owner !== 0) return false;
    } else if (i < an + ns) {
      // owner is the question name or an ancestor (the root included).
    } else if (type !== TYPE_OPT) {
      return false;
    }
    p = end + 10 + rdlen;
    if (p > msg.length) return false;
  }
  return p === msg.length;
}

/** Where the record after the owner name read last starts. */
let ownerEnd = 0;

/**
 * The owner name at `at` as a suffix of the question name: the index of the
 * question's label it starts at (0: the whole name, m: the root), or -1
 * when it is not one (or cannot be read). Sets ownerEnd.
 */
function readOwner(msg: Uint8Array, at: number, m: number): number {
  let p = at;
  let n = 0;
  let hops = 0;
  ownerEnd = -1;
  for (;;) {
    if (p >= msg.length) return -1;
    const len = msg[p]!;
    if (len === 0) {
      if (ownerEnd < 0) ownerEnd = p + 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (p + 1 >= msg.length || ++hops > MAX_HOPS) return -1;
      if (ownerEnd < 0) ownerEnd = p + 2;
      p = ((len & 0x3f) << 8) | msg[p + 1]!;
      continue;
    }
    if (len > 63 || n >= MAX_LABELS) return -1;
    ownerLabels[n++] = p;
    p += 1 + len;
  }
  const k = m - n;
  if (k < 0) return -1;
  for (let i = 0; i < n; i++) {
    const a = ownerLabels[i]!;
    const b = bounds[k + i]!;
    const len = msg[a]!;
    if (msg[b] !== len) return -1;
    for (let j = 1; j <= len; j++) if (lower(msg[a + j]!) !== lower(msg[b + j]!)) return -1;
  }
  return k;
}

function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}
