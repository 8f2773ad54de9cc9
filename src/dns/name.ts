/**
 * Domain names in wire format, read in place. Nothing here allocates except
 * nameToString (slow paths: routing, logs).
 */
import { HEADER_LEN, MAX_LABEL, MAX_NAME_WIRE, POINTER_MASK } from './constants.js';

/**
 * Offset just past the name that starts at `off`, or -1 if it is malformed
 * (runs past the end, label type 0x40/0x80, over 255 bytes, or a compression
 * pointer that does not point strictly backwards, which is what rules out
 * loops without following anything, or that points into the header: no name
 * is there, and what the bytes would read as changes when an answer's id and
 * flags are patched).
 */
export function skipName(msg: Uint8Array, off: number): number {
  const start = off;
  let wireLen = 0;
  while (off < msg.length) {
    const len = msg[off]!;
    if (len === 0) return off + 1;
    if ((len & POINTER_MASK) === POINTER_MASK) {
      if (off + 1 >= msg.length) return -1;
      const target = ((len & 0x3f) << 8) | msg[off + 1]!;
      return target >= HEADER_LEN && target < start ? off + 2 : -1;
    }
    if (len > MAX_LABEL) return -1;
    wireLen += len + 1;
    if (wireLen > MAX_NAME_WIRE - 1) return -1;
    off += len + 1;
  }
  return -1;
}

/** Pointers one name may lead through: a name takes at most 127 labels, and an encoder writes a pointer after a label. */
const MAX_HOPS = 128;

/**
 * As skipName, but the name must also expand: every pointer it leads through
 * points below the start of the run of labels it ends (so the bound falls at
 * each hop and no loop is possible) and never into the header, it leads
 * through at most MAX_HOPS of them (pointers to pointers would otherwise make
 * a name cost a hop per two bytes of the message), and the whole name is at
 * most 255 bytes; none of its bytes at or past `limit` (the end of the RDATA
 * it is in). For names a hit serves as stored (scanAnswer, on the miss path):
 * skipName looks at the first pointer only, and a name a client cannot
 * expand would be handed out for the entry's whole life.
 */
export function skipExpandableName(msg: Uint8Array, off: number, limit = msg.length): number {
  let end = -1;
  let runStart = off;
  let wireLen = 0;
  let hops = 0;
  while (off < limit) {
    const len = msg[off]!;
    if (len === 0) return end < 0 ? off + 1 : end;
    if ((len & POINTER_MASK) === POINTER_MASK) {
      if (off + 1 >= limit || ++hops > MAX_HOPS) return -1;
      const target = ((len & 0x3f) << 8) | msg[off + 1]!;
      if (target < HEADER_LEN || target >= runStart) return -1;
      if (end < 0) end = off + 2;
      off = runStart = target;
      continue;
    }
    if (len > MAX_LABEL) return -1;
    wireLen += len + 1;
    if (wireLen > MAX_NAME_WIRE - 1) return -1;
    off += len + 1;
  }
  return -1;
}

/**
 * Offset past an uncompressed name (as in a query's question), or -1.
 * Pointers are refused: in the question of a query there is nothing earlier
 * than the header for them to point at.
 */
export function skipUncompressedName(msg: Uint8Array, off: number): number {
  let wireLen = 0;
  while (off < msg.length) {
    const len = msg[off]!;
    if (len === 0) return wireLen + 1 > MAX_NAME_WIRE ? -1 : off + 1;
    if (len > MAX_LABEL) return -1;
    wireLen += len + 1;
    off += len + 1;
  }
  return -1;
}

function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

/**
 * Case-insensitive comparison of two uncompressed wire names (RFC 4343: only
 * ASCII letters fold). Label length bytes are compared as-is; they are < 64,
 * so the fold never touches them.
 */
export function namesEqualCI(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number, len: number): boolean {
  if (aOff + len > a.length || bOff + len > b.length) return false;
  for (let i = 0; i < len; i++) {
    if (lower(a[aOff + i]!) !== lower(b[bOff + i]!)) return false;
  }
  return true;
}

/**
 * Whether the names at `a` and `b` (offsets in the message that starts at
 * `base` of `buf`, which its pointers are relative to) are one name, ASCII
 * case folded, following compression pointers (at most MAX_HOPS for each, as
 * skipExpandableName lets a stored name take). For messages already
 * validated (a stored answer); false on anything malformed.
 */
export function sameNameAt(buf: Uint8Array, base: number, a: number, b: number): boolean {
  let pa = base + a;
  let pb = base + b;
  let hopsA = 0;
  let hopsB = 0;
  for (;;) {
    while (pa + 1 < buf.length && (buf[pa]! & POINTER_MASK) === POINTER_MASK) {
      if (++hopsA > MAX_HOPS) return false;
      pa = base + (((buf[pa]! & 0x3f) << 8) | buf[pa + 1]!);
    }
    while (pb + 1 < buf.length && (buf[pb]! & POINTER_MASK) === POINTER_MASK) {
      if (++hopsB > MAX_HOPS) return false;
      pb = base + (((buf[pb]! & 0x3f) << 8) | buf[pb + 1]!);
    }
    if (pa === pb) return true;
    const len = buf[pa];
    if (len === undefined || len !== buf[pb] || len > MAX_LABEL || pb + 1 + len > buf.length || pa + 1 + len > buf.length) return false;
    if (len === 0) return true;
    for (let i = 1; i <= len; i++) if (lower(buf[pa + i]!) !== lower(buf[pb + i]!)) return false;
    pa += len + 1;
    pb += len + 1;
  }
}

/** Copies `len` bytes of a wire name into `out`, folding ASCII to lower case. */
export function copyLowerName(src: Uint8Array, srcOff: number, out: Uint8Array, outOff: number, len: number): void {
  for (let i = 0; i < len; i++) out[outOff + i] = lower(src[srcOff + i]!);
}

/**
 * The bytes as they are, for the few of a question or a header: Buffer.copy
 * builds a view of the source range per call (about 100 bytes of garbage),
 * and a batched worker makes one such copy for each query a flood sends it.
 */
export function copyBytes(src: Uint8Array, srcOff: number, out: Uint8Array, outOff: number, len: number): void {
  for (let i = 0; i < len; i++) out[outOff + i] = src[srcOff + i]!;
}

/**
 * Writes the name at `off` to `out` at `outOff` without compression, following
 * pointers (at most 64 hops), and returns its length; with `out` null it only
 * measures. -1 if malformed. For echoing names from a client's message into an
 * answer of a different layout, where its pointers would point elsewhere. Slow path.
 */
export function expandName(msg: Uint8Array, off: number, out: Uint8Array | null, outOff: number): number {
  let hops = 0;
  let len = 0;
  while (off < msg.length) {
    const l = msg[off]!;
    if ((l & POINTER_MASK) === POINTER_MASK) {
      if (off + 1 >= msg.length || ++hops > 64) return -1;
      off = ((l & 0x3f) << 8) | msg[off + 1]!;
      continue;
    }
    if (l > MAX_LABEL || off + 1 + l > msg.length || len + l + 1 > MAX_NAME_WIRE) return -1;
    if (out !== null) out.set(msg.subarray(off, off + 1 + l), outOff + len);
    len += l + 1;
    if (l === 0) return len;
    off += l + 1;
  }
  return -1;
}

/**
 * Presentation form ("www.example.com", "." for the root), following
 * pointers (at most 64 hops). Returns undefined if malformed. Slow path only.
 */
export function nameToString(msg: Uint8Array, off: number): string | undefined {
  const labels: string[] = [];
  let hops = 0;
  let total = 0;
  while (off < msg.length) {
    const len = msg[off]!;
    if (len === 0) return labels.length === 0 ? '.' : labels.join('.');
    if ((len & POINTER_MASK) === POINTER_MASK) {
      if (off + 1 >= msg.length || ++hops > 64) return undefined;
      off = ((len & 0x3f) << 8) | msg[off + 1]!;
      continue;
    }
    if (len > MAX_LABEL || off + 1 + len > msg.length) return undefined;
    total += len + 1;
    // The root label's byte comes on top.
    if (total > MAX_NAME_WIRE - 1) return undefined;
    let label = '';
    for (let i = off + 1; i <= off + len; i++) {
      const c = msg[i]!;
      // Escape what would make the dotted form ambiguous (RFC 4343 2.1).
      if (c === 0x2e || c === 0x5c) label += '\\' + String.fromCharCode(c);
      else if (c < 0x21 || c > 0x7e) label += '\\' + String(c).padStart(3, '0');
      else label += String.fromCharCode(c);
    }
    labels.push(label);
    off += len + 1;
  }
  return undefined;
}

/**
 * Wire form of a presentation name, lower-cased ("Example.COM." -> 07example03com00).
 * Throws on labels over 63 bytes or names over 255: it is for config, not packets.
 */
export function nameToWire(name: string): Buffer {
  const trimmed = name.endsWith('.') ? name.slice(0, -1) : name;
  if (trimmed === '') return Buffer.from([0]);
  const parts = trimmed.split('.');
  const bytes: number[] = [];
  for (const p of parts) {
    if (p.length === 0 || p.length > MAX_LABEL) throw new Error(`invalid DNS name "${name}": bad label length`);
    bytes.push(p.length);
    for (let i = 0; i < p.length; i++) {
      // Checked before folding, and ASCII folded by hand: toLowerCase maps some non-ASCII (the Kelvin sign) to ASCII.
      const c = p.charCodeAt(i);
      if (c > 0x7e) throw new Error(`invalid DNS name "${name}": non-ASCII`);
      bytes.push(lower(c));
    }
  }
  bytes.push(0);
  if (bytes.length > MAX_NAME_WIRE) throw new Error(`invalid DNS name "${name}": longer than 255 bytes`);
  return Buffer.from(bytes);
}

/**
 * The wire name in name[0, nameLen) (lower-cased, uncompressed, its root
 * byte included: a cache key's name) is `zone` (nameToWire) or below it.
 * Reads bytes only: no string per question, as a zone table keyed by name
 * strings would make.
 */
export function nameInZone(name: Uint8Array, nameLen: number, zone: Uint8Array): boolean {
  const start = nameLen - zone.length;
  if (start < 0) return false;
  let off = 0;
  while (off < start) {
    const len = name[off]!;
    if (len === 0) return false;
    off += len + 1;
  }
  if (off !== start) return false;
  for (let i = 0; i < zone.length; i++) if (name[start + i] !== zone[i]) return false;
  return true;
}
