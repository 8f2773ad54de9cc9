/**
 * The textual forms an IP address takes in cluster DNS: the key the view's
 * reverse index uses, the labels of in-addr.arpa / ip6.arpa names, the dashed
 * names of pods and of endpoints without a hostname. Pure string work, slow
 * path only (PTR questions and index updates).
 */
import { isIPv4, isIPv6 } from 'node:net';

/**
 * One key per address, whatever its spelling: IPv4 dotted-decimal as given
 * (node's isIPv4 already refuses leading zeros, so it is canonical), IPv6 as
 * its 32 lower-case nibbles ("2001:db8::1" and "2001:0DB8:0:0::1" meet).
 * '' when `ip` is not an address. An IPv4 key never has 32 characters, so
 * the two families cannot collide.
 */
export function ipKey(ip: string): string {
  if (isIPv4(ip)) return ip;
  return ipv6Nibbles(ip);
}

export function isV4(ip: string): boolean {
  return isIPv4(ip);
}

/** 32 lower-case hex digits of an IPv6 literal, or ''. Zone ids (fe80::1%eth0) are not addresses here. */
export function ipv6Nibbles(ip: string): string {
  if (ip.includes('%') || !isIPv6(ip)) return '';
  const dbl = ip.indexOf('::');
  const head = dbl < 0 ? ip : ip.slice(0, dbl);
  const tail = dbl < 0 ? '' : ip.slice(dbl + 2);
  const h = groups(head);
  const t = groups(tail);
  const missing = 8 - h.length - t.length;
  let out = '';
  for (const g of h) out += g;
  for (let i = 0; i < missing; i++) out += '0000';
  for (const g of t) out += g;
  return out.toLowerCase();
}

/** Hex groups padded to 4 digits; an embedded dotted IPv4 tail becomes two groups. */
function groups(part: string): string[] {
  if (part === '') return [];
  const out: string[] = [];
  for (const g of part.split(':')) {
    if (g.includes('.')) {
      const b = g.split('.').map(Number);
      out.push(hex16(((b[0] ?? 0) << 8) | (b[1] ?? 0)), hex16(((b[2] ?? 0) << 8) | (b[3] ?? 0)));
    } else {
      out.push(g.padStart(4, '0'));
    }
  }
  return out;
}

function hex16(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** Canonical IPv6 text (RFC 5952 style, as node prints it) from a 32-nibble key. */
export function nibblesToIPv6(nibbles: string): string {
  const gs: string[] = [];
  for (let i = 0; i < 32; i += 4) gs.push(nibbles.slice(i, i + 4));
  // URL's host parser is the RFC 5952 serialiser node ships; no hand-written "::" search.
  return new URL(`http://[${gs.join(':')}]/`).hostname.slice(1, -1);
}

const DECIMAL_OCTET = /^(0|[1-9][0-9]{0,2})$/;
const NIBBLE = /^[0-9a-f]$/;

/**
 * The reverse-index key of a PTR name's labels below in-addr.arpa (left to
 * right, as in "4.3.2.1"), or '' when they are not exactly one address
 * (fewer labels, leading zeros, values over 255).
 */
export function inAddrKey(labels: readonly string[]): string {
  if (labels.length !== 4) return '';
  for (const l of labels) {
    if (!DECIMAL_OCTET.test(l) || Number(l) > 255) return '';
  }
  return `${labels[3]}.${labels[2]}.${labels[1]}.${labels[0]}`;
}

/** Same for ip6.arpa: exactly 32 single-nibble labels (lower-cased by the caller). */
export function ip6ArpaKey(labels: readonly string[]): string {
  if (labels.length !== 32) return '';
  let key = '';
  for (let i = 31; i >= 0; i--) {
    const l = labels[i]!;
    if (!NIBBLE.test(l)) return '';
    key += l;
  }
  return key;
}

/** "10.0.0.1" -> ["1","0","0","10","in-addr","arpa"] style owner name, as a dotted string. */
export function reverseName(ip: string): string {
  if (isIPv4(ip)) return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
  const n = ipv6Nibbles(ip);
  return n === '' ? '' : `${n.split('').reverse().join('.')}.ip6.arpa`;
}

/**
 * The name CoreDNS gives an endpoint without a hostname (kubernetes.go
 * endpointHostname): the address with '.' or ':' turned into '-', and a
 * trailing '-' (an address ending in "::") closed with '0' so the label does
 * not end in a hyphen. Uses the address as the API spelled it, like CoreDNS.
 */
export function dashedName(ip: string): string {
  if (ip.includes('.') && !ip.includes(':')) return ip.replaceAll('.', '-');
  const d = ip.toLowerCase().replaceAll(':', '-');
  return d.endsWith('-') ? d + '0' : d;
}

/**
 * dashedName(ip) === label, for a lower-case label, without building the
 * name: the names of every endpoint are compared with a question's label,
 * and most differ in their first characters.
 */
export function isDashedName(label: string, ip: string): boolean {
  const v4 = !ip.includes(':');
  const n = ip.length;
  const closed = !v4 && ip.endsWith(':');
  if (label.length !== (closed ? n + 1 : n)) return false;
  for (let i = 0; i < n; i++) {
    let c = ip.charCodeAt(i);
    if (c === (v4 ? 0x2e : 0x3a)) c = 0x2d;
    else if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    if (label.charCodeAt(i) !== c) return false;
  }
  return !closed || label.charCodeAt(n) === 0x30;
}

/**
 * The address a pod label stands for, CoreDNS `pods insecure` style
 * (kubernetes.go findPods): three dashes and no "--" is IPv4 ("10-1-2-3"),
 * anything else is read as IPv6 with ':' for '-' ("fd00--1"). '' when the
 * result is no address, and for a label holding a dot ("::ffff:1.2.3.4" as
 * one label): the owner of its answer would be written as several labels,
 * and CoreDNS reads the escaped dot as no address either.
 */
export function podLabelAddress(label: string): string {
  if (label.includes('.')) return '';
  let dashes = 0;
  for (let i = 0; i < label.length; i++) if (label.charCodeAt(i) === 0x2d) dashes++;
  if (dashes === 3 && !label.includes('--')) {
    const ip = label.replaceAll('-', '.');
    return isIPv4(ip) ? ip : '';
  }
  const ip = label.replaceAll('-', ':');
  return ip.includes('%') || !isIPv6(ip) ? '' : ip;
}
