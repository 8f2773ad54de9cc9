/**
 * The cluster view as a route's local answerer: a cache key in, an answer
 * shaped like kube-dns's out (id 0, question, records, no OPT), which the hit
 * path then caches and serves like any upstream answer. Never invents a
 * negative answer: before the first sync, or once the API server has been
 * silent longer than `maxSilenceMs`, a name the view lacks gets nothing here
 * (the failure order continues: stale, then SERVFAIL).
 */
import type { Clock } from '../clock.js';
import type { LocalAnswer, LocalAnswerer } from '../server/route.js';
import { encodeAnswer } from './encode.js';
import { answerCluster, isCertainNxdomain, recordOptions, type RecordOptions } from './records.js';
import type { ClusterView } from './view.js';

export interface ViewAnswererOptions {
  readonly view: ClusterView;
  readonly clock: Clock;
  /** The cluster domain ("cluster.local"). */
  readonly zone: string;
  /** TTL of records answered from the view, seconds (CoreDNS's 5). */
  readonly ttl: number;
  /** Past this much API silence, the view may no longer deny a name. */
  readonly maxSilenceMs: number;
  /** The cluster DNS address cluster names are forwarded to: its Service names the zone's nameserver when kube-dns is not there ('' or absent: none). */
  readonly dnsServiceIP?: string;
}

/** Cache keys end with type (2), class (2) and a flags byte after the wire name. */
const KEY_TAIL = 5;

export class ViewAnswerer implements LocalAnswerer {
  readonly #view: ClusterView;
  readonly #clock: Clock;
  readonly #zone: string;
  readonly #ttl: number;
  readonly #maxSilenceMs: number;
  readonly #dnsServiceIP: string;

  constructor(opts: ViewAnswererOptions) {
    this.#view = opts.view;
    this.#clock = opts.clock;
    this.#zone = opts.zone;
    this.#ttl = opts.ttl;
    this.#maxSilenceMs = opts.maxSilenceMs;
    this.#dnsServiceIP = opts.dnsServiceIP ?? '';
  }

  /** Synced, and heard from the API server recently enough to deny names. */
  get authoritative(): boolean {
    return this.#view.negativesAllowed(this.#clock.now(), this.#maxSilenceMs);
  }

  answer(key: string): LocalAnswer {
    const { name, qtype } = splitKey(key);
    const result = answerCluster(this.#view, name, qtype, this.#options());
    if (result.kind !== 'answer') return null;
    return { answer: encodeAnswer(name, qtype, result), chase: result.chase };
  }

  deniesForSure(key: string): boolean {
    return isCertainNxdomain(this.#view, splitKey(key).name, this.#options());
  }

  #options(): RecordOptions {
    return recordOptions({ zone: this.#zone, ttl: this.#ttl, negativesAllowed: this.authoritative, dnsServiceIP: this.#dnsServiceIP });
  }
}

function splitKey(key: string): { name: Buffer; qtype: number } {
  const end = key.length - KEY_TAIL;
  return { name: Buffer.from(key.slice(0, end), 'latin1'), qtype: (key.charCodeAt(end) << 8) | key.charCodeAt(end + 1) };
}
