/**
 * A structured cluster answer (kube/records.ts) as a full DNS response, shaped
 * like an upstream's: id 0, QR AA RD RA, the rcode, the question, the
 * records, no OPT. The cache stores it like any answer from kube-dns and
 * patches id, case and TTLs on every hit. Names are compressed as CoreDNS
 * compresses them (dns/compress.ts): an address record of a headless service
 * takes 16 bytes, not 40 or so, so a UDP answer carries as many addresses as
 * kube-dns would send. Off the hot path: a fallback answer is built once,
 * then served from the cache.
 */
import { FLAG_AA, FLAG_QR, FLAG_RA, FLAG_RD, HEADER_LEN, MAX_MESSAGE, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT, QClass, QType } from '../dns/constants.js';
import { NameTable } from '../dns/compress.js';
import { copyLowerName, nameToWire, skipUncompressedName } from '../dns/name.js';
import { ipv6Nibbles } from './ip.js';
import type { ClusterAnswer, ClusterRR } from './records.js';

/** Every answer is written here first, then copied out at its length. */
const scratch = Buffer.alloc(MAX_MESSAGE);

/**
 * `qname` is the question's uncompressed wire name, written back byte for
 * byte, and the owner names equal to it point at it. Throws on a malformed
 * `qname`: callers pass the name they already parsed.
 *
 * Past the largest DNS message (a headless service with thousands of
 * endpoints) the additional records go, then answers from the end: a subset
 * of a service's addresses is still a true answer, and one that fits every
 * transport; a client over UDP gets it cut further, with TC, by the hit
 * path. Writing stops at the first record that does not fit, so a service
 * of 18,000 endpoints costs what fits, not 18,000 records.
 */
export function encodeAnswer(qname: Uint8Array, qtype: number, ans: ClusterAnswer): Buffer {
  const nameEnd = skipUncompressedName(qname, 0);
  if (nameEnd < 0) throw new Error('encodeAnswer: malformed question name');
  const msg = scratch;
  msg.fill(0, 0, HEADER_LEN);
  msg.writeUInt16BE(FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA | ans.rcode, OFF_FLAGS);
  msg.writeUInt16BE(1, OFF_QDCOUNT);
  msg.set(qname.subarray(0, nameEnd), HEADER_LEN);
  let off = HEADER_LEN + nameEnd;
  msg.writeUInt16BE(qtype, off);
  msg.writeUInt16BE(QClass.IN, off + 2);
  off += 4;
  const names = new NameTable();
  const lower = Buffer.allocUnsafe(nameEnd);
  copyLowerName(qname, 0, lower, 0, nameEnd);
  names.note(lower, HEADER_LEN);

  const w = new Writer(msg, off, names);
  const an = w.records(ans.answer);
  const ns = an === ans.answer.length ? w.records(ans.authority) : 0;
  // The additional records help, the answer is the point: all of them or none.
  const mark = w.mark();
  let ar = an === ans.answer.length && ns === ans.authority.length ? w.records(ans.additional) : 0;
  if (ar < ans.additional.length) {
    w.undo(mark);
    ar = 0;
  }
  msg.writeUInt16BE(an, OFF_ANCOUNT);
  msg.writeUInt16BE(ns, OFF_NSCOUNT);
  msg.writeUInt16BE(ar, OFF_ARCOUNT);
  return Buffer.from(msg.subarray(0, w.off));
}

/** Records appended to one message, each whole or not at all. */
class Writer {
  readonly #wires = new Map<string, Buffer>();

  constructor(
    private readonly msg: Buffer,
    public off: number,
    private readonly names: NameTable,
  ) {}

  mark(): { off: number; names: number } {
    return { off: this.off, names: this.names.mark() };
  }

  undo(m: { off: number; names: number }): void {
    this.off = m.off;
    this.names.undo(m.names);
  }

  /** Writes the leading records that fit; returns how many. */
  records(rrs: readonly ClusterRR[]): number {
    for (let i = 0; i < rrs.length; i++) {
      const m = this.mark();
      const end = this.#record(rrs[i]!);
      if (end < 0) {
        this.undo(m);
        return i;
      }
      this.off = end;
    }
    return rrs.length;
  }

  /** The offset past the record, or -1 when it does not fit (or a name in it cannot be written). */
  #record(rr: ClusterRR): number {
    const msg = this.msg;
    let off = this.name(this.off, rr.name, true);
    if (off < 0 || off + 10 > MAX_MESSAGE) return -1;
    msg.writeUInt16BE(QType[rr.type], off);
    msg.writeUInt16BE(QClass.IN, off + 2);
    msg.writeUInt32BE(rr.ttl >>> 0, off + 4);
    const rdStart = off + 10;
    const rdEnd = this.#rdata(rr, rdStart);
    if (rdEnd < 0 || rdEnd - rdStart > 0xffff) return -1;
    msg.writeUInt16BE(rdEnd - rdStart, off + 8);
    return rdEnd;
  }

  #rdata(rr: ClusterRR, off: number): number {
    const msg = this.msg;
    switch (rr.type) {
      case 'A':
      case 'AAAA': {
        const bytes = addressBytes(rr.data);
        if (bytes === null || off + bytes.length > MAX_MESSAGE) return -1;
        msg.set(bytes, off);
        return off + bytes.length;
      }
      case 'CNAME':
      case 'PTR':
      case 'NS':
        return this.name(off, rr.data, true);
      case 'SRV': {
        if (off + 6 > MAX_MESSAGE) return -1;
        msg.writeUInt16BE(rr.data.priority, off);
        msg.writeUInt16BE(rr.data.weight, off + 2);
        msg.writeUInt16BE(rr.data.port, off + 4);
        return this.name(off + 6, rr.data.target, false);
      }
      case 'TXT':
        return this.#text(off, Buffer.from(rr.data, 'utf8'));
      case 'SOA': {
        off = this.name(off, rr.data.mname, true);
        if (off >= 0) off = this.name(off, rr.data.rname, true);
        if (off < 0 || off + 20 > MAX_MESSAGE) return -1;
        const d = rr.data;
        for (const [i, v] of [d.serial, d.refresh, d.retry, d.expire, d.minimum].entries()) msg.writeUInt32BE(v >>> 0, off + 4 * i);
        return off + 20;
      }
    }
  }

  /** Character-strings of at most 255 bytes each (RFC 1035 3.3.14). */
  #text(off: number, bytes: Buffer): number {
    let i = 0;
    do {
      const n = Math.min(255, bytes.length - i);
      if (off + 1 + n > MAX_MESSAGE) return -1;
      this.msg[off] = n;
      this.msg.set(bytes.subarray(i, i + n), off + 1);
      off += 1 + n;
      i += n;
    } while (i < bytes.length);
    return off;
  }

  name(off: number, name: string, compress: boolean): number {
    let wire = this.#wires.get(name);
    if (wire === undefined) {
      try {
        wire = nameToWire(name);
      } catch {
        // Names come from the view's own (validated) objects; one that is not a name ends its section there, never the answer.
        return -1;
      }
      // Most owners repeat (every address of a service): converted once per answer.
      this.#wires.set(name, wire);
    }
    return this.names.write(this.msg, off, MAX_MESSAGE, wire, compress);
  }
}

/** The 4 or 16 bytes of an address literal, or null. */
function addressBytes(ip: string): Uint8Array | null {
  if (!ip.includes(':')) {
    const parts = ip.split('.');
    if (parts.length !== 4) return null;
    const out = new Uint8Array(4);
    for (let i = 0; i < 4; i++) {
      const v = Number(parts[i]);
      if (!Number.isInteger(v) || v < 0 || v > 255) return null;
      out[i] = v;
    }
    return out;
  }
  const hex = ipv6Nibbles(ip);
  return hex === '' ? null : Uint8Array.from(Buffer.from(hex, 'hex'));
}
