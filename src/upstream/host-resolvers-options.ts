/**
 * What HostResolvers (host-resolvers.ts) is configured with: the servers,
 * glibc's timeout/attempts/rotate, the limits against a silent resolver, the
 * shared UDP sockets' rotation, the health probe's question and where it
 * counts. Every default is applied in its constructor.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { Counters } from '../stats/counters.js';
import type { ForwardDurations } from './forward-durations.js';
import type { HostResolversCounter } from './host-resolvers-counters.js';
import type { ProbeCounter } from './probe.js';
import type { ServerAddress } from './types.js';

export interface HostResolversOptions {
  servers: readonly ServerAddress[];
  /** Per try (glibc `options timeout:`, default 2 s here; glibc's own default is 5 s). */
  attemptTimeoutMs?: number;
  /** Rounds over the server list (glibc `options attempts:`, default 2). */
  attempts?: number;
  /** glibc `options rotate`. */
  rotate?: boolean;
  /**
   * Exchanges in flight at once; more are rejected with 'overloaded' (SERVFAIL
   * at once). Default 1000, CoreDNS forward's recommended max_concurrent: at a
   * healthy resolver's 10-50 ms that carries 20k-100k misses/s, far above what a
   * node's resolver takes (AWS: 1,024 packets/s per ENI), and against a silent
   * one it holds at most 1000 x maxSocketsPerExchange sockets.
   */
  maxInFlight?: number;
  /**
   * Sockets one exchange keeps open (default 3): tries that timed out keep
   * listening for a late answer until this many are open, then the oldest
   * closes. With 3, every try listens at least 3 try timeouts: the agent's
   * whole host budget (4.5 s) at the default 2 s, and 3 s at `timeout:1`.
   */
  maxSocketsPerExchange?: number;
  /** UDP sockets in use per server at once (default 4); tries take them round-robin. */
  udpSocketsPerServer?: number;
  /** Tries a UDP socket carries before a fresh one (a fresh port) replaces it (default 64). */
  udpRotateAfterTries?: number;
  /** Age after which a UDP socket takes no new try (default 1000 ms). */
  udpRotateAfterMs?: number;
  /** Where this instance counts; a fresh block when omitted. */
  counters?: Counters<HostResolversCounter>;
  /** coredns_forward_request_duration_seconds of each server, index for index with `servers` (none when omitted). */
  durations?: readonly (ForwardDurations | null)[];
  /**
   * A question whose answer proves the servers work again (". NS", a stub
   * domain's SOA): sent once a second while failing (each may take a try at
   * every server), until close(). None when omitted.
   */
  probeQuery?: Buffer;
  /** Where the probe counts its failed checks (coredns_forward_healthcheck_failures_total); nowhere when omitted. */
  probeCounters?: Counters<ProbeCounter>;
  clock?: Clock;
  logger?: Logger;
  name?: string;
}
