/**
 * IP text <-> bytes for netlink attributes. Kept here (not in src/addr.ts)
 * because only the interface code needs raw address bytes, and comparing
 * bytes avoids trusting that two spellings of one IPv6 address match.
 */
import { isIP } from 'node:net';

export type IpFamily = 4 | 6;

/** The address as 4 or 16 bytes, or null when the text is not an IP address. */
export function ipToBytes(text: string): Buffer | null {
  const fam = isIP(text);
  if (fam === 4) return Buffer.from(text.split('.').map(Number));
  if (fam !== 6) return null;
  // isIP() accepted it, so the shape is valid: at most one "::", hex groups, maybe a dotted tail.
  let s = text;
  const lastColon = s.lastIndexOf(':');
  if (s.includes('.', lastColon)) {
    // "::ffff:1.2.3.4": rewrite the dotted tail as two hex groups.
    const v4 = s.slice(lastColon + 1).split('.').map(Number);
    const hi = (((v4[0] ?? 0) << 8) | (v4[1] ?? 0)).toString(16);
    const lo = (((v4[2] ?? 0) << 8) | (v4[3] ?? 0)).toString(16);
    s = `${s.slice(0, lastColon + 1)}${hi}:${lo}`;
  }
  const [headText, restText] = s.split('::') as [string, string | undefined];
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((h) => parseInt(h, 16)));
  const head = parse(headText);
  const rest = restText === undefined ? [] : parse(restText);
  const zeros = 8 - head.length - rest.length;
  const groups = [...head, ...new Array<number>(Math.max(zeros, 0)).fill(0), ...rest];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

export function ipFamily(text: string): IpFamily | null {
  const f = isIP(text);
  return f === 4 || f === 6 ? f : null;
}

/** Canonical text (RFC 5952 for IPv6: lower case, longest zero run of two or more groups as "::"). */
export function bytesToIp(b: Uint8Array): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) return `<${b.length} bytes>`;
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(((b[i] ?? 0) << 8) | (b[i + 1] ?? 0));
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  if (bestAt < 0) return hex(g);
  return `${hex(g.slice(0, bestAt))}::${hex(g.slice(bestAt + bestLen))}`;
}

/** One spelling per address, so "fd00:0::a" and "fd00::a" compare equal. */
export function canonicalIp(text: string): string | null {
  const b = ipToBytes(text);
  return b === null ? null : bytesToIp(b);
}
