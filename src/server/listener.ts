/**
 * The seam between I/O and the resolver (design 7): a listener turns packets
 * into handle() calls and answers into sends. The plain dgram/net backend is
 * the first; batched recvmmsg workers and SO_REUSEPORT sockets are meant to
 * slot in beside it without the resolver knowing.
 */

/** Where an answer goes back to; for UDP it is Node's RemoteInfo as delivered. */
export interface ClientPeer {
  readonly address: string;
  readonly port: number;
  /**
   * 'IPv4' or 'IPv6' as Node reports it (dgram's RemoteInfo has it), for
   * coredns_dns_requests_total{family}; read instead of `address` when
   * present, so a peer that decodes its address lazily need not.
   */
  readonly family?: string;
  /** The address as a number, the same for every port (per-client counts: miss-waiters.ts clientHash); read instead of `address` when present. */
  readonly addressHash?: number;
}

export const Transport = { UDP: 0, TCP: 1 } as const;
export type Transport = (typeof Transport)[keyof typeof Transport];

/** Answers flow back through the channel the query came in on. */
export interface ClientChannel {
  readonly transport: Transport;
  /** Sends one answer; never throws. */
  send(answer: Buffer, peer: ClientPeer): void;
  /** The query gets no answer at all (dropped): lets the channel account for it. */
  discard(peer: ClientPeer): void;
}

export interface QueryHandler {
  /**
   * Handles one query; calls exactly one of channel.send / channel.discard
   * for it, now or later. Never throws.
   */
  handle(msg: Buffer, channel: ClientChannel, peer: ClientPeer): void;
}

export interface Listener {
  /** "udp://127.0.0.1:5353" and the like, for logs. */
  readonly name: string;
  start(): Promise<void>;
  /** Stops taking new queries but keeps answering the ones already taken. */
  pause(): void;
  /** Resolves when what the kernel had queued for this listener before pause() has been taken (await before waiting for in-flight queries). */
  drained(): Promise<void>;
  /** Closes sockets; call after in-flight queries are done. */
  close(): Promise<void>;
}
