/**
 * What a TcpPool (tcp-pool.ts) is configured with: the server, the pool's
 * size and limits, rotation, the connect factory (plain TCP or TLS) and the
 * names its logs and metrics use. Every default is applied in the pool's
 * constructor, from DEFAULTS (config.ts) where the flag is configurable.
 */
import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { Counters } from '../stats/counters.js';
import type { ForwardDurations } from './forward-durations.js';
import type { TcpPoolCounter } from './tcp-pool-counters.js';
import type { ServerAddress } from './types.js';


export interface TcpPoolOptions {
  server: ServerAddress;
  /** Persistent connections (default 2): enough to spread over two kube-dns pods and survive one reconnecting. */
  connections?: number;
  maxInFlightPerConnection?: number;
  maxQueued?: number;
  rotateAfterQueries?: number;
  rotateAfterMs?: number;
  connectTimeoutMs?: number;
  /** Where this pool counts; a fresh block when omitted. */
  counters?: Counters<TcpPoolCounter>;
  /**
   * Opens one connection to `server` (default: plain TCP). A tls.TLSSocket
   * counts as open at 'secureConnect', so a handshake or certificate failure
   * is a connect failure like a refused one (DNS over TLS, tls-resolvers.ts).
   */
  connect?: (server: ServerAddress) => net.Socket;
  /**
   * Whether a SERVFAIL/REFUSED answer to `query` counts against the server's
   * health (default: always). Where it does not, it is an answer like any
   * other: the cluster DNS passes on its own upstream's failures for outside
   * reverse lookups, which say nothing of the cluster records it serves.
   */
  servfailCounts?: (query: Buffer) => boolean;
  /**
   * A connection with queries outstanding that has read nothing this long is stalled (tcp-pick.ts): for a server
   * that serves each connection in order, as CoreDNS and dnsmasq do (default STALL_MS, 300 ms); null: never, for
   * one that answers out of order (a DNS-over-TLS resolver).
   */
  stallMs?: number | null;
  /** For logs and metrics (default tcp://IP:PORT). */
  name?: string;
  /** What the server is, in log lines (default "cluster dns"). */
  kind?: string;
  /** coredns_forward_request_duration_seconds of its server (none when omitted). */
  durations?: ForwardDurations | null;
  clock?: Clock;
  logger?: Logger;
}
