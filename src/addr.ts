/** Parsing of addresses as operators write them: "1.2.3.4", "1.2.3.4:53", "::1", "[::1]:53". */
import { isIP } from 'node:net';
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
  if (isIP(host.split('%')[0] ?? '') === 0) return `"${text}": "${host}" is not an IPv4 or IPv6 address`;
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      return `"${text}": port must be 1-65535`;
    }
    port = Number(portText);
  }
  if (port === undefined) return `"${text}": a port is required (ADDR:PORT)`;
  return { host, port };
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
