/** The simulator's public types and defaults (see dns-server.ts). */
import type { Packet } from 'dns-packet';

export interface SimContext {
  readonly transport: 'udp' | 'tcp';
  readonly remoteAddress: string;
  readonly remotePort: number;
}

/** Return the answer packet (id/flags are filled in for you if missing: id copied from the query, QR=1, RA=1, question copied), or null for "no answer". May be async. */
export type SimHandler = (query: Packet, ctx: SimContext) => Packet | null | Promise<Packet | null>;

export interface SimFaults {
  /** Added before each answer (default 0). */
  latencyMs: number;
  /** Uniform random extra 0..jitterMs (default 0). */
  jitterMs: number;
  /** 0..1: fraction of queries silently not answered (default 0). */
  lossRate: number;
  /** Answer nothing (default false). */
  dropAll: boolean;
  /** Over UDP answer with TC=1 and empty sections; TCP answers normally (default false). */
  truncateUdp: boolean;
  /** TCP: close a connection (FIN) on receiving this many queries on it, without answering the last one (0 = never). */
  closeAfterQueries: number;
  /** TCP: hold answers briefly and write them in reverse order of arrival, so pipelining clients see out-of-order answers. */
  reorderTcp: boolean;
  /** Force this rcode (e.g. 'SERVFAIL') with empty sections, without asking the handler (default null). */
  rcode: string | null;
  /** UDP: before the real answer, send one with a wrong id and one with a wrong question. */
  spoofFirst: boolean;
}

export interface SimStats {
  udpQueries: number;
  tcpQueries: number;
  tcpConnections: number;
  answered: number;
  dropped: number;
  /** Lower-cased qname -> count. */
  byName: Map<string, number>;
}

export interface SimStartOptions {
  /** Default 127.0.0.1; '::1' for IPv6. */
  host?: string;
  /** 0 = ephemeral; UDP and TCP share the port. */
  port?: number;
  /** Both default true. */
  udp?: boolean;
  tcp?: boolean;
  handler: SimHandler;
  faults?: Partial<SimFaults>;
}

export function defaultFaults(over: Partial<SimFaults> | undefined): SimFaults {
  return {
    latencyMs: 0, jitterMs: 0, lossRate: 0, dropAll: false, truncateUdp: false,
    closeAfterQueries: 0, reorderTcp: false, rcode: null, spoofFirst: false, ...over,
  };
}

export function emptyStats(): SimStats {
  return { udpQueries: 0, tcpQueries: 0, tcpConnections: 0, answered: 0, dropped: 0, byName: new Map() };
}

