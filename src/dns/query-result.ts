/**
 * What the query parser (query.ts) produces: the status of a parse, the
 * Query it describes, the cache key's flag bits and size, and the two forms
 * a parse takes, QueryScratch (overwritten by the next parse: the hit path)
 * and QuerySnapshot, the immutable copy (whatever must outlive a call).
 * Kept apart from the parser so the shapes read on their own; query.ts
 * re-exports them.
 */

export const QueryStatus = {
  OK: 0,
  /** Not even a header, or a response (QR=1): answering would only feed loops and reflection. */
  DROP: 1,
  FORMERR: 2,
  NOTIMP: 3,
  /** EDNS version we do not speak (RFC 6891 6.1.3). */
  BADVERS: 4,
  /**
   * Signed with TSIG (the last additional record). We hold no keys, so the
   * answer is NOTAUTH with an unsigned TSIG saying BADKEY (RFC 8945 5.2):
   * build it with tsig.ts tsigErrorResponse.
   */
  TSIG: 5,
} as const;
export type QueryStatus = (typeof QueryStatus)[keyof typeof QueryStatus];

/**
 * A parsed query that stays as it is: what outlives a call (a waiting
 * client, a pending upstream question) keeps one, made by queryCopy or a
 * subclass (server/miss-waiters.ts Waiter). Its fields are what every parse
 * result has: `Query`.
 */
export class QuerySnapshot {
  readonly status: QueryStatus;
  /** The client's message; the question's bytes are echoed from it (0x20 case). */
  readonly msg: Buffer;
  readonly id: number;
  readonly flags: number;
  /** Offset just past the question's name; the name is msg[12, qnameEnd). 0 when unreadable. */
  readonly qnameEnd: number;
  readonly qtype: number;
  readonly qclass: number;
  readonly edns: boolean;
  /** The client's advertised UDP payload size (RFC 6891), at least 512. */
  readonly udpSize: number;
  readonly dnssecOk: boolean;
  /**
   * Cache key: lower-cased wire name + type + class + one byte of flags
   * (DO, CD), as a latin1 string. Built from bytes so names with non-ASCII
   * bytes never fold together. Empty unless status is OK.
   */
  readonly key: string;

  /** `q`'s fields, with `msg` in place of its message (a copy, when the original is a receive buffer about to be reused) and `key`. */
  constructor(q: Query, msg: Buffer, key: string) {
    this.status = q.status;
    this.msg = msg;
    this.id = q.id;
    this.flags = q.flags;
    this.qnameEnd = q.qnameEnd;
    this.qtype = q.qtype;
    this.qclass = q.qclass;
    this.edns = q.edns;
    this.udpSize = q.udpSize;
    this.dnssecOk = q.dnssecOk;
    this.key = key;
  }
}

/** What a parse describes, whichever form it takes (QueryScratch or QuerySnapshot). */
export type Query = QuerySnapshot;

/** Flags byte in the key. */
export const KEY_DO = 1;
export const KEY_CD = 2;
/** What follows the name in a key: type (2), class (2) and the flags byte. */
export const KEY_TAIL = 5;
/** Longest key: a name is at most 255 bytes, plus type, class and flags. */
export const KEY_MAX = 255 + KEY_TAIL;

/** The message of a scratch no parse has filled, or whose message was let go (parseQuery). */
export const EMPTY = Buffer.alloc(0);

type Latin1Slicer = Buffer & { latin1Slice?: (start: number, end: number) => string };

/**
 * A parse result that is overwritten by the next parse: what the hit path
 * parses into, so a hit allocates no Query and no key string (one per
 * HitPath; parseQuery has its own). The key is kept as bytes with its hash,
 * for the cache's byte lookup (DnsCache.lookupBytes).
 *
 * Valid only until the next parseQueryInto on it. Whatever must outlive the
 * call (a miss's waiter, a pending upstream question) takes a snapshot with
 * queryCopy; never keep the scratch itself.
 */
export class QueryScratch implements Query {
  status: QueryStatus;
  msg: Buffer;
  id: number;
  flags: number;
  qnameEnd: number;
  qtype: number;
  qclass: number;
  edns: boolean;
  udpSize: number;
  dnssecOk: boolean;
  /** The key's bytes (see Query.key) in [0, keyLen); keyLen is 0 unless status is OK. */
  readonly keyBytes: Buffer;
  keyLen: number;
  /** hashKey of the key, computed while the key was built. */
  keyHash: number;

  constructor() {
    this.status = QueryStatus.DROP;
    this.msg = EMPTY;
    this.id = 0;
    this.flags = 0;
    this.qnameEnd = 0;
    this.qtype = 0;
    this.qclass = 0;
    this.edns = false;
    this.udpSize = 512;
    this.dnssecOk = false;
    this.keyBytes = Buffer.alloc(KEY_MAX);
    this.keyLen = 0;
    this.keyHash = 0;
  }

  /**
   * The key as a latin1 string: a new string on every read (an allocation;
   * the hit path reads it only on a miss or a prefetch).
   */
  get key(): string {
    const n = this.keyLen;
    if (n === 0) return '';
    // latin1Slice skips toString's encoding dispatch (about 8% of a hit); it has been on Buffer since Node 0.x.
    const slicer = this.keyBytes as Latin1Slicer;
    return slicer.latin1Slice !== undefined ? slicer.latin1Slice(0, n) : this.keyBytes.toString('latin1', 0, n);
  }
}

/** An immutable snapshot of `q` (see QuerySnapshot): `key` is its key string, so a caller that already made one does not make another. */
export function queryCopy(q: Query, msg: Buffer, key: string): Query {
  return new QuerySnapshot(q, msg, key);
}
