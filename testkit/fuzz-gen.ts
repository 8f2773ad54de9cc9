// Seeded generators of bad DNS queries, shared by test/fuzz.test.ts and
// `npm run fuzz` (bench/fuzz.ts): random bytes, and valid queries
// (dns-packet) mutated at the places parsers get wrong (lying counts,
// compression loops and forward pointers, labels past the end, OPT in the
// wrong section or twice, huge option lengths, every opcode, QR=1, empty
// questions). Everything is driven by one PRNG so a failing run is replayed
// from its seed.
import * as dnsPacket from 'dns-packet';

/** mulberry32: small, fast, good enough to drive a fuzzer; [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export class Fuzz {
  readonly #r: () => number;
  constructor(seed: number) {
    this.#r = prng(seed);
  }
  /** 0 .. n-1 */
  int(n: number): number {
    return Math.floor(this.#r() * n);
  }
  chance(p: number): boolean {
    return this.#r() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  label(maxLen = 12): string {
    const chars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_';
    const n = 1 + this.int(maxLen);
    let s = '';
    for (let i = 0; i < n; i++) s += chars[this.int(chars.length)];
    return s;
  }

  /** A name the fake upstreams know, or a random one in one of their zones, or odd but legal shapes. */
  name(): string {
    switch (this.int(10)) {
      case 0: return 'web.default.svc.cluster.local';
      case 1: return 'WeB.DeFault.svc.cluster.LOCAL';
      case 2: return 'www.example.com';
      case 3: return 'big.example.com';
      case 4: return `${this.label()}.${this.label()}.svc.cluster.local`;
      case 5: return `${this.label()}.example.com`;
      case 6: return `${this.int(256)}.${this.int(256)}.96.10.in-addr.arpa`;
      case 7: return '.';
      case 8: {
        // Long: up to the 255-byte limit (63-byte labels).
        const labels: string[] = [];
        for (let n = 1 + this.int(4), i = 0; i < n; i++) labels.push(this.label(63));
        return labels.join('.');
      }
      default: return `${this.label()}.${this.label(4)}`;
    }
  }

  /** A well-formed query as dns-packet writes it, with and without EDNS. */
  validQuery(id: number): Buffer {
    const types: readonly dnsPacket.RecordType[] = ['A', 'A', 'A', 'AAAA', 'AAAA', 'MX', 'TXT', 'PTR', 'SRV', 'CNAME', 'NS', 'SOA', 'CAA', 'AXFR', 'IXFR'];
    const classes: readonly dnsPacket.RecordClass[] = ['IN', 'IN', 'IN', 'IN', 'IN', 'IN', 'CH', 'HS', 'ANY'];
    let flags = 0;
    if (this.chance(0.8)) flags |= dnsPacket.RECURSION_DESIRED;
    if (this.chance(0.2)) flags |= dnsPacket.CHECKING_DISABLED;
    if (this.chance(0.1)) flags |= dnsPacket.AUTHENTIC_DATA;
    const p: dnsPacket.Packet = {
      type: 'query',
      id,
      flags,
      questions: [{ name: this.name(), type: this.pick(types), class: this.pick(classes) }],
    };
    if (this.chance(0.5)) {
      const opt: dnsPacket.OptAnswer = {
        type: 'OPT',
        name: '.',
        udpPayloadSize: this.pick([1, 512, 1232, 4096, 65535, 1 + this.int(65535)]),
        extendedRcode: 0,
        ednsVersion: 0,
        flags: this.chance(0.3) ? dnsPacket.DNSSEC_OK : 0,
        flag_do: false,
        options: this.chance(0.2) ? [{ code: 12, length: this.int(64) }] : [],
      };
      p.additionals = [opt];
    }
    try {
      return dnsPacket.encode(p);
    } catch {
      // dns-packet refuses some names (e.g. too long after our label choice): fall back to a plain one.
      return dnsPacket.encode({ ...p, questions: [{ name: 'www.example.com', type: 'A', class: 'IN' }] });
    }
  }

  /** One of the kinds of bad input, with a name for failure messages. */
  packet(id: number): { kind: string; bytes: Buffer } {
    const roll = this.int(100);
    if (roll < 15) return { kind: 'random', bytes: this.bytes(this.int(601)) };
    if (roll < 25) return { kind: 'valid', bytes: this.validQuery(id) };
    let b = this.validQuery(id);
    const kinds: string[] = [];
    for (let n = 1 + (this.chance(0.3) ? this.int(3) : 0), i = 0; i < n; i++) {
      const m = this.pick(MUTATIONS);
      kinds.push(m.name);
      b = m.apply(this, b);
    }
    return { kind: kinds.join('+'), bytes: b };
  }
}

/** Where the question's name ends in a message whose question is still intact (-1 if not). */
export function questionNameEnd(b: Buffer): number {
  let off = 12;
  while (off < b.length) {
    const len = b[off]!;
    if (len === 0) return off + 1;
    if (len > 63) return -1;
    off += len + 1;
  }
  return -1;
}

interface Mutation {
  readonly name: string;
  apply(f: Fuzz, b: Buffer): Buffer;
}

const withArcount = (b: Buffer, delta: number): Buffer => {
  if (b.length >= 12) b.writeUInt16BE((b.readUInt16BE(10) + delta) & 0xffff, 10);
  return b;
};

/** An OPT record: owner, type 41, size, ext-rcode, version, flags, rdlength, rdata. */
function optRecord(owner: Buffer, size: number, version: number, rdlen: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(41, 0);
  fixed.writeUInt16BE(size, 2);
  fixed[4] = 0;
  fixed[5] = version;
  fixed.writeUInt16BE(0, 6);
  fixed.writeUInt16BE(rdlen, 8);
  return Buffer.concat([owner, fixed, rdata]);
}

export const MUTATIONS: readonly Mutation[] = [
  {
    name: 'flip',
    apply(f, b) {
      const out = Buffer.from(b);
      for (let n = 1 + f.int(8), i = 0; i < n && out.length > 0; i++) {
        const at = f.int(out.length);
        out[at] = f.chance(0.5) ? out[at]! ^ (1 << f.int(8)) : f.int(256);
      }
      return out;
    },
  },
  {
    name: 'truncate',
    apply(f, b) {
      const qEnd = questionNameEnd(b);
      const cuts = [f.int(12), 12, 13, b.length - 1, f.int(b.length + 1)];
      if (qEnd > 0) cuts.push(12 + f.int(qEnd - 12), qEnd - 1, qEnd, qEnd + 1, qEnd + 2, qEnd + 3, qEnd + 4, qEnd + 5, qEnd + 4 + f.int(Math.max(1, b.length - qEnd - 4)));
      return b.subarray(0, Math.max(0, Math.min(b.length, f.pick(cuts))));
    },
  },
  {
    name: 'counts',
    apply(f, b) {
      const out = Buffer.from(b);
      if (out.length < 12) return out;
      for (let n = 1 + f.int(3), i = 0; i < n; i++) {
        out.writeUInt16BE(f.pick([0, 2, 3, 0x7fff, 0x8000, 0xfffe, 0xffff, f.int(65536)]), 4 + 2 * f.int(4));
      }
      return out;
    },
  },
  {
    name: 'label-past-end',
    apply(f, b) {
      const out = Buffer.from(b);
      const qEnd = questionNameEnd(out);
      if (qEnd < 0) return out;
      // Make the first (or last) label claim more bytes than the message has.
      const at = f.chance(0.5) ? 12 : qEnd - 1;
      out[at] = Math.min(63, out.length - at + f.int(20));
      return f.chance(0.5) ? out.subarray(0, Math.min(out.length, at + 1 + f.int(8))) : out;
    },
  },
  {
    name: 'label-over-63',
    apply(f, b) {
      const out = Buffer.from(b);
      if (out.length <= 12) return out;
      out[12] = f.pick([64, 65, 0x7f, 0x80, 0xbf, 64 + f.int(128)]);
      return out;
    },
  },
  {
    name: 'pointer-in-question',
    apply(f, b) {
      const qEnd = questionNameEnd(b);
      if (qEnd < 0) return b;
      // Replace the name, or its tail after the first label, with a pointer (backwards to the header, to itself, or forwards).
      const firstLabelEnd = 12 + 1 + b[12]!;
      const from = b[12] === 0 || f.chance(0.5) ? 12 : firstLabelEnd;
      const target = f.pick([0, 4, 12, from, from + 2, 0x3fff]);
      const ptr = Buffer.from([0xc0 | (target >> 8), target & 0xff]);
      return Buffer.concat([b.subarray(0, from), ptr, b.subarray(qEnd)]);
    },
  },
  {
    name: 'pointer-loop-additional',
    apply(f, b) {
      if (b.length < 12) return b;
      const at = b.length;
      // Owner is a pointer to itself, or two pointers to each other, or a forward pointer.
      const owner = f.pick([
        Buffer.from([0xc0 | (at >> 8), at & 0xff]),
        Buffer.from([1, 0x61, 0xc0 | (at >> 8), at & 0xff]),
        Buffer.from([0xc0 | ((at + 2) >> 8), (at + 2) & 0xff, 0xc0 | (at >> 8), at & 0xff]),
        Buffer.from([0xc0 | ((at + 40) >> 8), (at + 40) & 0xff]),
      ]);
      const rr = Buffer.alloc(10);
      rr.writeUInt16BE(f.pick([41, 1, 16]), 0);
      rr.writeUInt16BE(1, 2);
      return withArcount(Buffer.concat([b, owner, rr]), 1);
    },
  },
  {
    name: 'opt-bad-length',
    apply(f, b) {
      if (b.length < 12) return b;
      const rdata = f.bytes(f.int(8));
      const rdlen = f.pick([rdata.length + 1, rdata.length + 200, 0xffff, Math.max(0, rdata.length - 1)]);
      return withArcount(Buffer.concat([b, optRecord(Buffer.from([0]), 1232, 0, rdlen, rdata)]), 1);
    },
  },
  {
    name: 'two-opts',
    apply(f, b) {
      if (b.length < 12) return b;
      const one = (): Buffer => optRecord(Buffer.from([0]), f.pick([512, 1232, 4096]), 0, 0, Buffer.alloc(0));
      return withArcount(Buffer.concat([b, one(), one()]), 2);
    },
  },
  {
    name: 'opt-owner-not-root',
    apply(f, b) {
      if (b.length < 12) return b;
      const owner = f.chance(0.5) ? Buffer.from([1, 0x78, 0]) : Buffer.from([0xc0, 12]);
      return withArcount(Buffer.concat([b, optRecord(owner, 1232, 0, 0, Buffer.alloc(0))]), 1);
    },
  },
  {
    name: 'edns-version',
    apply(f, b) {
      if (b.length < 12) return b;
      return withArcount(Buffer.concat([b, optRecord(Buffer.from([0]), 1232, 1 + f.int(255), 0, Buffer.alloc(0))]), 1);
    },
  },
  {
    // Every opcode, QUERY (0) included so a mutated opcode field can also land back on it.
    name: 'opcode',
    apply(f, b) {
      const out = Buffer.from(b);
      if (out.length >= 3) out[2] = (out[2]! & 0x87) | (f.int(16) << 3);
      return out;
    },
  },
  {
    // A record in the answer or authority section whose owner points forwards (past itself, or past the end).
    name: 'forward-pointer-record',
    apply(f, b) {
      if (b.length < 12) return b;
      const at = b.length;
      const target = f.pick([at, at + 2, at + 12, at + 200, 0x3fff]);
      const rr = Buffer.alloc(14);
      rr[0] = 0xc0 | ((target >> 8) & 0x3f);
      rr[1] = target & 0xff;
      rr.writeUInt16BE(1, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(60, 6);
      rr.writeUInt16BE(f.pick([0, 4, 0xffff]), 10);
      const out = Buffer.concat([b, rr]);
      const section = f.chance(0.5) ? 6 : 8;
      out.writeUInt16BE((out.readUInt16BE(section) + 1) & 0xffff, section);
      return out;
    },
  },
  {
    // A well-formed OPT record, but in the answer or authority section.
    name: 'opt-wrong-section',
    apply(f, b) {
      if (b.length < 12) return b;
      const out = Buffer.concat([b, optRecord(Buffer.from([0]), 1232, 0, 0, Buffer.alloc(0))]);
      const section = f.chance(0.5) ? 6 : 8;
      out.writeUInt16BE((out.readUInt16BE(section) + 1) & 0xffff, section);
      return out;
    },
  },
  {
    // An OPT whose option claims far more bytes than the record holds (the record's own rdlength honest).
    name: 'opt-huge-option',
    apply(f, b) {
      if (b.length < 12) return b;
      const body = f.bytes(f.int(12));
      const option = Buffer.alloc(4);
      option.writeUInt16BE(f.pick([8, 10, 12, 15, 65001, f.int(65536)]), 0);
      option.writeUInt16BE(f.pick([0xffff, 0x8000, body.length + 1, body.length + 1 + f.int(60000)]), 2);
      const rdata = Buffer.concat([option, body]);
      return withArcount(Buffer.concat([b, optRecord(Buffer.from([0]), f.pick([512, 1232, 65535]), 0, rdata.length, rdata)]), 1);
    },
  },
  {
    // QDCOUNT=1 with nothing (or only the root name, or the name without its type) behind the header.
    name: 'empty-question',
    apply(f, b) {
      if (b.length < 12) return b;
      const head = Buffer.from(b.subarray(0, 12));
      head.writeUInt16BE(1, 4);
      head.writeUInt16BE(0, 6);
      head.writeUInt16BE(0, 8);
      head.writeUInt16BE(0, 10);
      return f.pick([head, Buffer.concat([head, Buffer.from([0])]), Buffer.concat([head, Buffer.from([0, 0, 1])]), Buffer.concat([head, Buffer.from([0, 0, 1, 0, 1])])]);
    },
  },
  {
    name: 'qr',
    apply(_f, b) {
      const out = Buffer.from(b);
      if (out.length >= 3) out[2] = out[2]! | 0x80;
      return out;
    },
  },
  {
    name: 'qtype-class',
    apply(f, b) {
      const out = Buffer.from(b);
      const qEnd = questionNameEnd(out);
      if (qEnd < 0 || qEnd + 4 > out.length) return out;
      if (f.chance(0.5)) out.writeUInt16BE(f.pick([0, 41, 251, 252, 255, 65535, f.int(65536)]), qEnd);
      else out.writeUInt16BE(f.pick([0, 3, 4, 254, 255, 0x8001, f.int(65536)]), qEnd + 2);
      return out;
    },
  },
  {
    name: 'splice',
    apply(f, b) {
      const at = f.int(b.length + 1);
      const junk = f.bytes(1 + f.int(40));
      return f.chance(0.5) ? Buffer.concat([b.subarray(0, at), junk, b.subarray(at)]) : Buffer.concat([b.subarray(0, at), junk]);
    },
  },
  {
    name: 'trailing-garbage',
    apply(f, b) {
      return Buffer.concat([b, f.bytes(1 + f.int(100))]);
    },
  },
];
