/**
 * Where the hit path's answers leave (hit-path.ts): how large an answer a
 * client may be sent, the counters and histograms every query and answer feeds, the
 * channel's send, and the sampled query log. Kept apart so the hit path
 * reads as what to answer and this as how it goes out.
 */
import { CLASSIC_UDP_LIMIT, HEADER_LEN, MAX_MESSAGE } from '../dns/constants.js';
import { nameToString } from '../dns/name.js';
import type { Query } from '../dns/query.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { HitPathHistograms } from './hit-path-options.js';
import { Transport, type ClientChannel, type ClientPeer } from './listener.js';
import { RCODE_SLOT_BASE, RCODE_SLOT_OTHER, REQUEST_SLOT_BASE, REQUEST_TYPE_COUNT, SERVER_COUNTERS, peerFamilyIndex, requestTypeIndex } from './stats.js';

/** Where an answer came from, in the query log. */
export type AnswerSource = 'cache' | 'upstream' | 'view' | 'stale' | 'servfail' | 'refused-query';

/**
 * The most DNS one datagram carries: 65535 less the IPv4 (20) and UDP (8)
 * headers; IPv6's payload length leaves out its own header, so less UDP's
 * only. Past it sendmsg fails (EMSGSIZE): the client gets nothing, where a
 * smaller answer with TC=1 would send it to TCP. --max-udp-size and EDNS
 * both allow up to 65535.
 */
export const MAX_UDP_PAYLOAD_IPV4 = 65507;
export const MAX_UDP_PAYLOAD_IPV6 = 65527;

/** Logged the first time and every LOG_EVERY-th after: a bug hit by every query must not become a log flood. */
const LOG_EVERY = 1000;

const S = SERVER_COUNTERS.slot;

/**
 * The largest UDP answer for `q` to `peer`: 512 without EDNS, else the
 * client's size capped by ours (RFC 6891 6.2.5) and by what one datagram to
 * the peer's family carries (read only past the IPv4 limit: never on the
 * common path).
 */
export function udpAnswerLimit(q: { readonly edns: boolean; readonly udpSize: number }, maxUdpSize: number, peer: ClientPeer): number {
  if (!q.edns) return CLASSIC_UDP_LIMIT;
  const size = q.udpSize < maxUdpSize ? q.udpSize : maxUdpSize;
  if (size <= MAX_UDP_PAYLOAD_IPV4) return size;
  return peerFamilyIndex(peer) === 0 ? MAX_UDP_PAYLOAD_IPV4 : Math.min(size, MAX_UDP_PAYLOAD_IPV6);
}

export class AnswerOut {
  /** Largest UDP answer whatever the client advertises (reloadable). */
  maxUdpSize: number;
  readonly #v: Float64Array;
  readonly #hist: HitPathHistograms | null;
  readonly #clock: Clock;
  readonly #logger: Logger;
  #threw: number;

  constructor(o: { maxUdpSize: number; values: Float64Array; histograms: HitPathHistograms | null; clock: Clock; logger: Logger }) {
    this.maxUdpSize = o.maxUdpSize;
    this.#v = o.values;
    this.#hist = o.histograms;
    this.#clock = o.clock;
    this.#logger = o.logger;
    this.#threw = 0;
  }

  /** The largest answer `q` may get back on `channel`: the message limit over TCP. */
  limit(q: Query, channel: ClientChannel, peer: ClientPeer): number {
    if (channel.transport === Transport.TCP) return MAX_MESSAGE;
    return udpAnswerLimit(q, this.maxUdpSize, peer);
  }

  /**
   * The one place an answer leaves. `arrivedAt` < 0: answered in the same turn (duration ~0). `rcode`: the full
   * rcode when its upper bits are in the answer's OPT (BADVERS), else the header's four bits are read.
   */
  send(answer: Buffer, channel: ClientChannel, peer: ClientPeer, arrivedAt = -1, rcode = answer[3]! & 0x0f): void {
    const hist = this.#hist;
    if (hist !== null) {
      hist.responseSize[channel.transport]!.observe(answer.length);
      if (arrivedAt < 0) hist.duration.observe(0);
      else hist.duration.observeMs(this.#clock.now() - arrivedAt);
    }
    this.#v[rcode <= 5 ? RCODE_SLOT_BASE + rcode : RCODE_SLOT_OTHER]!++;
    if ((answer[2]! & 0x02) !== 0) this.#v[S.truncated]!++;
    channel.send(answer, peer);
  }

  /** A query as it arrives: coredns_dns_requests_total{proto,family,type} and the request size histogram. */
  countRequest(msg: Buffer, qtype: number, channel: ClientChannel, peer: ClientPeer): void {
    this.#v[channel.transport === Transport.TCP ? S.requestsTcp : S.requestsUdp]!++;
    // Answered synchronously (hits, errors): the first bucket (250 us); reading a clock per hit would cost more than the rest.
    if (this.#hist !== null) this.#hist.requestSize[channel.transport]!.observe(msg.length);
    // One slot bump (qtype 0 when unreadable: "other").
    this.#v[REQUEST_SLOT_BASE + (channel.transport * 2 + peerFamilyIndex(peer)) * REQUEST_TYPE_COUNT + requestTypeIndex(qtype)]!++;
  }

  /** Answering one of a question's waiting clients threw: that client is lost, the others are still answered. */
  waiterThrew(err: unknown): void {
    if (this.#threw++ % LOG_EVERY === 0) this.#logger.error('answering a waiting client threw', { error: String(err), count: this.#threw });
  }

  /** One line of the sampled query log (--query-log-sample): off the hit path's common case by construction. `rcode` as in send(). */
  logQuery(q: Query, peer: ClientPeer, reply: Buffer, durationMs: number, source: AnswerSource, rcode = reply[3]! & 0x0f): void {
    this.#logger.info('query', {
      client: peer.address,
      name: q.qnameEnd > 0 ? (nameToString(q.msg, HEADER_LEN) ?? '?') : '?',
      type: q.qtype,
      rcode,
      durationMs: Math.round(durationMs * 1000) / 1000,
      source,
    });
  }
}
