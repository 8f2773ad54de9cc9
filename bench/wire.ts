/**
 * Query templates: every query the generator sends is a preallocated wire
 * message built once per (name, type). The send path copies it, writes the
 * id (and, for names that must be unique, a counter into a fixed-width label),
 * and never touches dns-packet.
 */
import { Zone, encodeName, expectedAnswer, hashWireName, zoneOf, type ZoneConfig } from './sim/zones.js';

export const HEADER_LEN = 12;
const FLAG_RD = 0x0100;

/** Width of the base-36 counter in unique names: 36^8 ≈ 2.8e12 names per run tag. */
export const UNIQUE_WIDTH = 8;
/** Written where the counter goes in a template; replaced on every send. */
const UNIQUE_PLACEHOLDER = '0'.repeat(UNIQUE_WIDTH);
export const UNIQUE_MARK = '{n}';

const DIGITS = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz', 'ascii');
const POW36: number[] = [];
for (let i = 0, p = 1; i < UNIQUE_WIDTH; i++, p *= 36) POW36.unshift(p);

export interface QueryTemplate {
  /** Presentation name; for unique templates it contains UNIQUE_MARK where the counter goes. */
  readonly name: string;
  readonly qtype: number;
  /** Full query message, id 0, RD set, no EDNS (glibc's default). */
  readonly wire: Buffer;
  /** End of the question section (header + qname + type + class). */
  readonly questionEnd: number;
  /** Which upstream the name belongs to (used to route direct-to-upstream traffic). */
  readonly zone: Zone;
  /** Expected rcode from the zone rules. */
  readonly rcode: number;
  /** Hash of the wire name (addresses derive from it); -1 for unique templates (computed per answer). */
  readonly hash: number;
  /** Offset of the counter digits inside `wire`, or -1. */
  readonly uniqueOffset: number;
}

/** Builds the template for `name` (may contain UNIQUE_MARK once) and `qtype`. */
export function makeTemplate(name: string, qtype: number, zones: ZoneConfig): QueryTemplate {
  const markAt = name.indexOf(UNIQUE_MARK);
  const concrete = markAt < 0 ? name : name.slice(0, markAt) + UNIQUE_PLACEHOLDER + name.slice(markAt + UNIQUE_MARK.length);
  const qname = encodeName(concrete);
  const wire = Buffer.alloc(HEADER_LEN + qname.length + 4);
  wire.writeUInt16BE(FLAG_RD, 2);
  wire.writeUInt16BE(1, 4);
  qname.copy(wire, HEADER_LEN);
  wire.writeUInt16BE(qtype, HEADER_LEN + qname.length);
  wire.writeUInt16BE(1, HEADER_LEN + qname.length + 2);
  let uniqueOffset = -1;
  if (markAt >= 0) {
    // In wire form every dot becomes a length byte, so the offset is the same as in text plus the leading length byte.
    uniqueOffset = HEADER_LEN + 1 + markAt;
  }
  // The zone rules do not depend on the counter digits, so the placeholder name tells the expected rcode.
  const exp = expectedAnswer(concrete, qtype, zones);
  return {
    name,
    qtype,
    wire,
    questionEnd: wire.length,
    zone: zoneOf(concrete, zones),
    rcode: exp.rcode,
    hash: markAt >= 0 ? -1 : hashWireName(wire, HEADER_LEN),
    uniqueOffset,
  };
}

/** Writes `value` as UNIQUE_WIDTH base-36 digits at `off`. */
export function writeUnique(buf: Uint8Array, off: number, value: number): void {
  let v = value;
  for (let i = UNIQUE_WIDTH - 1; i >= 0; i--) {
    buf[off + i] = DIGITS[v % 36] ?? 0x30;
    v = Math.floor(v / 36);
  }
}

/** The digit `k` (0 = most significant) of `value`, as an ASCII byte. */
export function uniqueDigit(value: number, k: number): number {
  return DIGITS[Math.floor(value / (POW36[k] ?? 1)) % 36] ?? 0x30;
}

/** The concrete presentation name a template has for a given counter (for dnsperf files and messages). */
export function renderName(t: QueryTemplate, value: number): string {
  if (t.uniqueOffset < 0) return t.name;
  const digits = Buffer.alloc(UNIQUE_WIDTH);
  writeUnique(digits, 0, value);
  return t.name.replace(UNIQUE_MARK, digits.toString('ascii'));
}

export function qtypeName(qtype: number): string {
  return qtype === 1 ? 'A' : qtype === 28 ? 'AAAA' : `TYPE${qtype}`;
}
