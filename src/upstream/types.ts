/**
 * What the resolver asks of an upstream: send this query, tell me once how it
 * went. A miss becomes one exchange object that the transport completes; no
 * promise per query (the style of undici's dispatch/handler).
 */
import type { UpstreamHealth } from './health.js';

/** Why an exchange failed; each maps to SERVFAIL for the client, and to a metric. */
export type UpstreamFailure =
  | 'timeout' // deadline passed with no matching answer
  | 'network' // could not connect / send, connection reset with the query in flight and no retry left
  | 'overloaded' // local queue for the upstream is full; not sent at all
  | 'closed'; // the upstream is shutting down

export interface UpstreamExchange {
  /**
   * The query in wire format. Bytes 0-1 (id) are ignored: the transport writes
   * an id of its own into its own copy and never modifies this buffer.
   */
  readonly query: Buffer;
  /** Absolute deadline in Clock milliseconds; past it, reject('timeout'). */
  readonly deadline: number;
  /**
   * Called exactly once with an answer whose question matches the query
   * (dns/question.ts answerMatchesQuery). Its id is the transport's; the
   * caller rewrites it. The buffer is the caller's to keep.
   */
  resolve(answer: Buffer): void;
  /** Called exactly once instead of resolve. */
  reject(reason: UpstreamFailure): void;
}

export interface Upstream {
  /** For logs and metrics, e.g. "tcp://10.96.0.10:53" or "host-resolvers". */
  readonly name: string;
  /** Fed by the transport's own events (connects, answers, timeouts, SERVFAIL); read by the resolver. */
  readonly health: UpstreamHealth;
  /** Never throws; completes the exchange later (or synchronously with reject). */
  send(exchange: UpstreamExchange): void;
  /** Stops taking exchanges, rejects queued ones with 'closed', lets in-flight ones finish (bounded by their deadlines), then closes sockets. */
  close(): Promise<void>;
  /** Gives up at once on everything still in flight (rejected 'closed') and closes every socket: a shutdown past its grace. */
  abort(): void;
}

export interface ServerAddress {
  readonly host: string; // IPv4 or IPv6 literal, no brackets
  readonly port: number;
}
