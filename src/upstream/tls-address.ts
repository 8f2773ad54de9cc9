/**
 * DNS-over-TLS upstream addresses as operators write them:
 *
 *   tls://IP[@NAME]          port 853 (RFC 7858 3.1)
 *   tls://IP:PORT[@NAME]     IPv6 as tls://[2606:4700::1111]:853@NAME
 *
 * NAME is what the server's certificate must be issued for (CoreDNS forward's
 * `tls_servername`, and the SNI we send). Without it the certificate must name
 * the IP address itself (an IP SAN, as 1.1.1.1's and 8.8.8.8's do). The
 * address is always an IP: a host name would be resolved by the system
 * resolver, maybe through us.
 */
import { isIP } from 'node:net';
import { formatHostPort, parseHostPort } from '../addr.js';
import type { ServerAddress } from './types.js';

export const TLS_SCHEME = 'tls://';
/** RFC 7858 3.1. */
export const DOT_PORT = 853;

export interface TlsServer extends ServerAddress {
  /** Checked against the certificate and sent as SNI; null = the certificate must name the IP. */
  readonly serverName: string | null;
}

export function isTlsAddress(text: string): boolean {
  return text.trim().toLowerCase().startsWith(TLS_SCHEME);
}

/** Returns the server, or an error string naming what is wrong. */
export function parseTlsServer(text: string): TlsServer | string {
  const s = text.trim();
  if (!s.toLowerCase().startsWith(TLS_SCHEME)) return `"${text}": expected tls://IP[:PORT][@NAME]`;
  const rest = s.slice(TLS_SCHEME.length);
  const at = rest.indexOf('@');
  const addrText = at >= 0 ? rest.slice(0, at) : rest;
  const name = at >= 0 ? rest.slice(at + 1) : null;
  if (addrText === '') return `"${text}": no address before "@" (expected tls://IP[:PORT][@NAME])`;
  const addr = parseHostPort(addrText, DOT_PORT);
  if (typeof addr === 'string') {
    if (!addr.includes('is not an IPv4 or IPv6 address')) return `"${text}": ${addr}`;
    return `"${text}": the address must be an IP, not "${addrText}" (a host name would be resolved through the system resolver, maybe through us); give the certificate's name after "@"`;
  }
  if (addr.host.includes('%')) return `"${text}": a scoped IPv6 address cannot be checked against a certificate`;
  if (name === null) return { host: addr.host, port: addr.port, serverName: null };
  const serverName = name.toLowerCase().replace(/\.$/, '');
  if (!validHostName(serverName)) {
    return `"${text}": "${name}" is not a host name the certificate could be checked against (letters, digits, "-" and "." only)`;
  }
  // Unbound (forward-addr IP@853#NAME) and Knot Resolver write the port after "@"; no certificate can name "853".
  if (/^[0-9]+$/.test(serverName.slice(serverName.lastIndexOf('.') + 1))) {
    const port = Number(serverName);
    const hint = Number.isInteger(port) && port >= 1 && port <= 65535 ? `${TLS_SCHEME}${formatHostPort({ host: addr.host, port })}@NAME` : 'tls://IP:PORT@NAME';
    return `"${text}": "${name}" is not a host name (its last label is all digits); a port goes after ":", as ${hint}`;
  }
  return { host: addr.host, port: addr.port, serverName };
}

/** RFC 1123 host name (the SNI and certificate name); an IP literal is refused (SNI carries names only, RFC 6066 3). */
function validHostName(name: string): boolean {
  if (name.length === 0 || name.length > 253 || isIP(name) !== 0) return false;
  return name.split('.').every((l) => /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(l));
}

/** "tls://1.1.1.1:853@one.one.one.one": the upstream's name in logs and metrics. */
export function formatTlsServer(s: TlsServer): string {
  return `${TLS_SCHEME}${formatHostPort(s)}${s.serverName !== null ? `@${s.serverName}` : ''}`;
}
