/**
 * Parsing of addresses as operators write them: "1.2.3.4", "1.2.3.4:53",
 * "::1", "[::1]:53". IPv6 comes out in its one canonical spelling (RFC 5952,
 * as the kernel reports a peer), so comparing hosts is comparing strings.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { BlockList, isIP, SocketAddress } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { ServerAddress } from './upstream/types.js';

/** Returns the address, or an error string naming what is wrong. */
export function parseHostPort(text: string, defaultPort: number | undefined): ServerAddress | string {
  const s = text.trim();
  let host: string;
  let portText: string | undefined;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) return `"${text}": missing "]"`;
    host = s.slice(1, close);
    const rest = s.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return `"${text}": expected ":PORT" after "]"`;
      portText = rest.slice(1);
    }
  } else if (isIP(s) === 6) {
    host = s;
  } else {
    const colon = s.lastIndexOf(':');
    host = colon >= 0 ? s.slice(0, colon) : s;
    portText = colon >= 0 ? s.slice(colon + 1) : undefined;
  }
  const ip = canonicalIp(host);
  if (ip === null) return `"${text}": "${host}" is not an IPv4 or IPv6 address (a %zone: IPv6 only, an interface name or index)`;
  if (ipv4Compatible(ip)) {
    // "::1:5353" is an address, ::0.1.83.83: almost always [::1]:5353 written without its brackets.
    return `"${text}": ${ip} is an IPv4-compatible IPv6 address (deprecated, RFC 4291), which no server has; ${BRACKETS}${suchAs(s)}`;
  }
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      return `"${text}": port must be 1-65535`;
    }
    port = Number(portText);
  }
  // "fd00::10:53" for --listen (no default port) is an address without one: almost always [fd00::10]:53 unbracketed.
  if (port === undefined) {
    const meant = suchAs(s);
    return `"${text}": a port is required (ADDR:PORT)${meant === '' ? '' : `; ${BRACKETS}${meant}`}`;
  }
  return { host: ip, port };
}

const BRACKETS = 'an IPv6 address with a port is written in brackets';

/**
 * `s` (trimmed) with its last group as a port ("fd00::10:53": fd00::10 at
 * 53), when it is an unbracketed IPv6 address whose last group is a port
 * number and the rest still an address; null otherwise.
 */
function lastGroupAsPort(s: string): ServerAddress | null {
  if (s.startsWith('[') || isIP(s) !== 6) return null;
  const colon = s.lastIndexOf(':');
  const last = s.slice(colon + 1);
  const host = canonicalIp(s.slice(0, colon));
  if (host === null || !/^\d{1,5}$/.test(last) || Number(last) < 1 || Number(last) > 65535) return null;
  return { host, port: Number(last) };
}

/** ", such as [HOST]:PORT" when `s` reads as an unbracketed IPv6 address with a port; '' otherwise. */
function suchAs(s: string): string {
  const meant = lastGroupAsPort(s);
  return meant === null ? '' : `, such as ${formatHostPort(meant)}`;
}

/**
 * A warning when `text` is an IPv6 address without brackets whose last group
 * could be a port ("fd00::10:53"): it is read as that address at `a.port`,
 * which it may well be (so not refused), but [fd00::10]:53 written without its
 * brackets reads the same. Null for anything else.
 */
export function portLikeLastGroup(text: string, a: ServerAddress): string | null {
  const s = text.trim();
  const meant = lastGroupAsPort(s);
  if (meant === null) return null;
  return `"${s}": read as ${formatHostPort(a)}; if ${formatHostPort(meant)} was meant, write it so (${BRACKETS}), or ${formatHostPort(a)} to keep this reading without this warning`;
}

const IPV4_COMPATIBLE = new BlockList();
IPV4_COMPATIBLE.addSubnet('::', 96, 'ipv6');

/** In ::/96 but neither the wildcard nor loopback (RFC 4291 2.5.5.1: deprecated, never assigned). */
function ipv4Compatible(ip: string): boolean {
  const base = ip.split('%')[0]!;
  return isIP(base) === 6 && base !== '::' && base !== '::1' && IPV4_COMPATIBLE.check(base, 'ipv6');
}

/** A %zone names an interface (or its index): no empty one, no spaces or separators. */
const ZONE = /^[A-Za-z0-9_.-]+$/;

/**
 * `host` in canonical form: IPv4 as is, IPv6 compressed and lower case
 * (inet_ntop's spelling, which is what rinfo.address gives), a %zone kept as
 * written; null when it is no IP address, or its zone is empty or malformed.
 */
export function canonicalIp(host: string): string | null {
  const pct = host.indexOf('%');
  const base = pct >= 0 ? host.slice(0, pct) : host;
  const family = isIP(base);
  if (family === 4) return pct >= 0 ? null : base;
  if (family !== 6) return null;
  const zone = pct >= 0 ? host.slice(pct + 1) : null;
  if (zone !== null && !ZONE.test(zone)) return null;
  const canonical = new SocketAddress({ address: base, family: 'ipv6' }).address;
  return zone === null ? canonical : `${canonical}%${zone}`;
}

export function formatHostPort(a: ServerAddress): string {
  return isIP(a.host) === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

export function isLoopback(host: string): boolean {
  return host.startsWith('127.') || host === '::1';
}

/**
 * Whether a datagram to `host` reaches a socket bound to `bound` (the ports
 * alike): the same address in any spelling, or under a wildcard any address
 * of this host of its family (`local`, as os.networkInterfaces() lists them;
 * 127/8 under 0.0.0.0). IPv6 wildcards bind IPv6 only here (the listeners set
 * ipv6Only). A wildcard as destination is this host, as Linux takes it.
 */
export function reaches(host: string, bound: string, local: readonly string[]): boolean {
  const to = destination(host);
  const at = unzoned(bound);
  if (isIP(to) !== isIP(at)) return false;
  if (to === at) return true;
  return isWildcard(at) && (isLoopback(to) || local.some((a) => unzoned(a) === to));
}

/** Canonical, without a zone, IPv4-mapped IPv6 as the IPv4 address it carries, and a wildcard as this host's loopback. */
function destination(host: string): string {
  const ip = unzoned(host);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(ip);
  const plain = mapped !== null ? mapped[1]! : ip;
  return plain === '0.0.0.0' ? '127.0.0.1' : plain === '::' ? '::1' : plain;
}

function unzoned(host: string): string {
  const pct = host.indexOf('%');
  const base = pct >= 0 ? host.slice(0, pct) : host;
  return canonicalIp(base) ?? base;
}

/**
 * `host` as a socket can dial it. A %zone that is an interface index
 * ("fe80::1%2": glibc reads resolv.conf's zones as names or indexes, and
 * systemd-resolved writes indexes) becomes that interface's name: Node's
 * sockets read the zone with if_nametoindex() only, so "2" names no
 * interface, the address goes out with scope 0 and the kernel refuses it
 * (EINVAL). An index's name is found among the IPv6 addresses, whose scopeid
 * is their interface's index for link-local ones; an interface with none
 * (IPv6 address generation off) carries its index in no address listed
 * there, so then /sys/class/net/NAME/ifindex names it. Sync file reads: called at configuration and connect time only,
 * never per query. Unchanged otherwise.
 */
export function dialableHost(host: string): string {
  const pct = host.indexOf('%');
  const index = pct >= 0 && /^\d+$/.test(host.slice(pct + 1)) ? Number(host.slice(pct + 1)) : 0;
  if (index === 0) return host;
  const name = Object.entries(networkInterfaces()).find(([, addrs]) => (addrs ?? []).some((a) => a.family === 'IPv6' && a.scopeid === index))?.[0]
    ?? sysfsInterfaceName(index);
  return name === undefined ? host : `${host.slice(0, pct)}%${name}`;
}

const SYS_NET = '/sys/class/net';

/** The name of the interface with this index as sysfs lists it (the caller's network namespace); undefined when none, or no sysfs. */
function sysfsInterfaceName(index: number): string | undefined {
  let names: string[];
  try {
    names = readdirSync(SYS_NET);
  } catch {
    return undefined;
  }
  return names.find((name) => {
    try {
      return Number(readFileSync(`${SYS_NET}/${name}/ifindex`, 'utf8').trim()) === index;
    } catch {
      // Gone since the listing, or no ifindex file: not this one.
      return false;
    }
  });
}
