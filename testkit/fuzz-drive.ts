// Sends fuzz packets at an agent and holds every answer to testkit/fuzz-check.ts:
// UDP in bounded bursts over a few reused sockets, TCP with honest framing in
// random-sized writes, and TCP connections that lie about their framing.
// Shared by test/fuzz.test.ts and `npm run fuzz` (bench/fuzz.ts).
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import net from 'node:net';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { SimDnsServer, staticHandler } from './dns-server.js';
import { checkAnswer, Ledger } from './fuzz-check.js';
import type { Fuzz } from './fuzz-gen.js';

export interface FuzzTarget {
  host: string;
  port: number;
}

/** The names the fuzzer's valid queries ask (Fuzz.name()): a cluster service, and external names, one of them over 512 bytes. */
export const FUZZ_CLUSTER_RECORDS = {
  'web.default.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00::a'], ttl: 30 },
};
export const FUZZ_EXTERNAL_RECORDS = {
  'www.example.com': { A: ['192.0.2.80'], ttl: 300 },
  // ~1 KB uncompressed: over 512 without EDNS, so UDP answers exercise truncation.
  'big.example.com': { A: Array.from({ length: 30 }, (_, i) => `198.51.100.${i + 1}`), ttl: 60 },
};

/** The fake cluster DNS and external resolver a fuzzed agent forwards to. */
export async function fuzzUpstreams(): Promise<{ cluster: SimDnsServer; external: SimDnsServer; close(): Promise<void> }> {
  const cluster = await SimDnsServer.start({ handler: staticHandler(FUZZ_CLUSTER_RECORDS, { soaZone: 'cluster.local', negativeTtl: 30 }) });
  const external = await SimDnsServer.start({ handler: staticHandler(FUZZ_EXTERNAL_RECORDS, { soaZone: 'example.com', negativeTtl: 60 }) });
  return { cluster, external, close: async () => void (await Promise.all([cluster.close(), external.close()])) };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `done()` holds; returns whether it did. */
export async function until(done: () => boolean, maxMs: number, stepMs = 5): Promise<boolean> {
  for (let waited = 0; waited < maxMs; waited += stepMs) {
    if (done()) return true;
    await sleep(stepMs);
  }
  return done();
}

/** One client UDP socket with its ledger and its own id sequence. */
export interface UdpChannel {
  readonly sock: dgram.Socket;
  readonly ledger: Ledger;
  nextId: number;
  /** Datagrams from anyone but the target (must be none). */
  strangers: number;
}

export async function openUdpChannels(target: FuzzTarget, n: number, maxUdpSize?: number): Promise<UdpChannel[]> {
  const out: UdpChannel[] = [];
  for (let i = 0; i < n; i++) {
    const sock = dgram.createSocket({ type: net.isIPv6(target.host) ? 'udp6' : 'udp4', recvBufferSize: 4 * 1024 * 1024 });
    await new Promise<void>((resolve) => sock.bind(0, net.isIPv6(target.host) ? '::1' : '127.0.0.1', () => resolve()));
    const ch: UdpChannel = { sock, ledger: new Ledger('udp', maxUdpSize), nextId: 0, strangers: 0 };
    sock.on('message', (m, rinfo) => {
      if (rinfo.address !== target.host || rinfo.port !== target.port) {
        ch.strangers++;
        ch.ledger.fail(`datagram from ${rinfo.address}:${rinfo.port}`);
        return;
      }
      ch.ledger.onAnswer(m);
    });
    out.push(ch);
  }
  return out;
}

export function closeUdpChannels(chs: readonly UdpChannel[]): void {
  for (const c of chs) c.sock.close();
}

export interface UdpFuzzResult {
  sent: number;
  /** Queries still owed an answer when their burst's wait ran out (taken off the ledger, counted here). */
  unanswered: number;
  /** Samples of what was unanswered, for the report. */
  unansweredSamples: string[];
}

/**
 * Sends `count` fuzz packets over the channels, `burst` at a time, with at
 * most `window` queries owed an answer at once (bounded in memory and in
 * socket buffers: this is about correctness, not overload). A query still
 * unanswered `lostAfterMs` after it was sent is taken off its ledger and
 * counted. Ids cycle per channel, skipping those still owed.
 */
export async function udpFuzz(target: FuzzTarget, fuzz: Fuzz, chs: readonly UdpChannel[], count: number, opts: { burst?: number; window?: number; lostAfterMs?: number; onBurst?: (sent: number) => void } = {}): Promise<UdpFuzzResult> {
  const burst = opts.burst ?? 100;
  const window = opts.window ?? 400;
  const lostAfterMs = opts.lostAfterMs ?? 4000;
  const res: UdpFuzzResult = { sent: 0, unanswered: 0, unansweredSamples: [] };
  const owed = (): number => chs.reduce((n, c) => n + c.ledger.owed.size, 0);
  const expire = (all: boolean): void => {
    const cutoff = performance.now() - lostAfterMs;
    for (const ch of chs) {
      for (const [id, o] of ch.ledger.owed) {
        if (!all && o.at > cutoff) continue;
        res.unanswered++;
        if (res.unansweredSamples.length < 5) res.unansweredSamples.push(`id ${id} (${o.kind}) ${o.q.toString('hex').slice(0, 120)}`);
        ch.ledger.owed.delete(id);
      }
    }
  };
  while (res.sent < count) {
    for (let i = 0; i < burst && res.sent < count; i++, res.sent++) {
      const ch = chs[res.sent % chs.length]!;
      let id = ch.nextId;
      while (!ch.ledger.free(id)) id = (id + 1) & 0xffff;
      ch.nextId = (id + 1) & 0xffff;
      const { kind, bytes } = fuzz.packet(id);
      if (bytes.length >= 2) bytes.writeUInt16BE(id, 0);
      ch.ledger.add(bytes, kind);
      ch.sock.send(bytes, target.port, target.host);
    }
    opts.onBurst?.(res.sent);
    // Yield so the answers (and, in process, the agent) run; then hold while the window is full.
    await new Promise((r) => setImmediate(r));
    for (let spins = 0; owed() >= window; spins++) {
      await sleep(1);
      if (spins % 100 === 99) expire(false);
    }
  }
  await until(() => owed() === 0, lostAfterMs + 500, 2);
  expire(true);
  return res;
}

/**
 * One TCP connection with honest framing: every payload framed with its real
 * length (zero-length frames included), written in random-sized chunks so
 * frames straddle reads, `window` frames at a time: the next batch goes out
 * once the last one's answers are in (or after a bound), so answers never
 * pile up unread behind a slow client (the agent resets a client that leaves
 * too much unread: that is its protection, not what this drives at).
 * Resolves once every owed answer came (or after `timeoutMs`) and the
 * connection is closed.
 */
export function tcpHonest(target: FuzzTarget, fuzz: Fuzz, payloads: Array<{ kind: string; bytes: Buffer }>, timeoutMs = 6000, window = 200): Promise<Ledger> {
  const ledger = new Ledger('tcp');
  for (const p of payloads) ledger.add(p.bytes, p.kind);
  const batches: Buffer[] = [];
  for (let i = 0; i < payloads.length; i += window) batches.push(Buffer.concat(payloads.slice(i, i + window).map((p) => frame(p.bytes))));
  return new Promise((resolve) => {
    const sock = net.connect(target.port, target.host);
    const dec = new FrameDecoder((f) => ledger.onAnswer(Buffer.from(f)));
    let finished = false;
    let written = false;
    const finish = (): void => {
      if (finished || !written) return;
      finished = true;
      clearTimeout(timer);
      sock.end();
      sock.once('close', () => resolve(ledger));
      setTimeout(() => sock.destroy(), 1000).unref();
    };
    const timer = setTimeout(() => {
      written = true;
      finish();
    }, timeoutMs);
    sock.on('data', (c) => {
      dec.push(c);
      if (ledger.owed.size === 0) finish();
    });
    sock.on('error', (e) => {
      ledger.fail(`tcp client error ${e.message}`);
      finished = true;
      clearTimeout(timer);
      resolve(ledger);
    });
    sock.on('connect', async () => {
      let due = 0;
      for (let b = 0; b < batches.length && !finished; b++) {
        const stream = batches[b]!;
        for (let off = 0; off < stream.length; ) {
          const n = 1 + fuzz.int(700);
          sock.write(stream.subarray(off, off + n));
          off += n;
          if (fuzz.chance(0.2)) await sleep(0);
        }
        // Owed answers of the frames written so far: everything not yet written is still owed too.
        due += Math.min(window, payloads.length - b * window);
        const owedUnwritten = payloads.slice(due).filter((p) => p.bytes.length >= 12 && (p.bytes[2]! & 0x80) === 0).length;
        await until(() => finished || ledger.owed.size <= owedUnwritten, Math.max(1000, timeoutMs / 2), 2);
      }
      written = true;
      if (ledger.owed.size === 0) finish();
    });
  });
}

/** `n` fuzz payloads for one honest TCP connection, ids 0..n-1, some zero-length frames among them. */
export function tcpPayloads(fuzz: Fuzz, n: number): Array<{ kind: string; bytes: Buffer }> {
  return Array.from({ length: n }, (_, i) => {
    const p = fuzz.chance(0.02) ? { kind: 'zero-length', bytes: Buffer.alloc(0) } : fuzz.packet(i);
    if (p.bytes.length >= 2) p.bytes.writeUInt16BE(i, 0);
    return p;
  });
}

export interface LiarResult {
  failures: string[];
  answers: number;
  closed: boolean;
}

/**
 * A TCP connection that misbehaves (`script` writes to it). Every frame that
 * comes back must still be a well-formed answer; resolves when the agent has
 * closed the connection (or after `timeoutMs`, `closed` false).
 */
export function tcpLiar(target: FuzzTarget, script: (sock: net.Socket, answers: () => number) => Promise<void>, timeoutMs = 5000): Promise<LiarResult> {
  const failures: string[] = [];
  let answers = 0;
  return new Promise((resolve) => {
    const sock = net.connect(target.port, target.host);
    const dec = new FrameDecoder((f) => {
      answers++;
      const bad = checkAnswer(Buffer.from(f), null, 'tcp');
      if (bad !== null && failures.length < 5) failures.push(bad);
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ failures, answers, closed: false });
    }, timeoutMs);
    sock.on('data', (c) => dec.push(c));
    sock.on('error', () => {}); // a reset after our own destroy() or half-frame is part of the game
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ failures, answers, closed: true });
    });
    sock.on('connect', () => void script(sock, () => answers));
  });
}

export interface LiarScript {
  what: string;
  /** Frames written (queries, honest or not), for the counts. */
  frames: number;
  minAnswers: number;
  run(s: net.Socket, answers: () => number): Promise<void>;
}

/** One round of the lying-framing scripts: overstated and understated prefixes, random streams, cuts, length 0 and 65535. */
export function liarScripts(fuzz: Fuzz): LiarScript[] {
  const good = (id: number): Buffer => frame(fuzz.validQuery(id));
  return [
    {
      what: 'prefix longer than the message, then FIN',
      frames: 6,
      minAnswers: 5,
      run: async (s, answers) => {
        s.write(Buffer.concat(Array.from({ length: 5 }, (_, k) => good(k))));
        await until(() => answers() >= 5, 3000);
        const m = fuzz.validQuery(99);
        const f = frame(m);
        f.writeUInt16BE(m.length + 1 + fuzz.int(500), 0);
        s.end(f);
      },
    },
    {
      what: 'prefix shorter than the message: the rest is read as frames',
      frames: 20,
      minAnswers: 0,
      run: async (s) => {
        const parts: Buffer[] = [];
        for (let k = 0; k < 20; k++) {
          const f = frame(fuzz.validQuery(k));
          f.writeUInt16BE(Math.max(0, f.length - 2 - 1 - fuzz.int(20)), 0);
          parts.push(f);
        }
        s.write(Buffer.concat(parts));
        await sleep(100);
        s.end();
      },
    },
    {
      what: 'random byte stream',
      frames: 4,
      minAnswers: 0,
      run: async (s) => {
        for (let k = 0; k < 4; k++) {
          s.write(fuzz.bytes(1 + fuzz.int(2000)));
          await sleep(5);
        }
        await sleep(100);
        s.end();
      },
    },
    {
      what: 'zero-length frames, then a good one',
      frames: 2,
      minAnswers: 1,
      run: async (s, answers) => {
        s.write(Buffer.concat([Buffer.alloc(2 * (1 + fuzz.int(50))), good(1)]));
        await until(() => answers() >= 1, 3000);
        s.end();
      },
    },
    {
      what: 'cut mid-prefix',
      frames: 1,
      minAnswers: 0,
      run: async (s) => {
        s.write(Buffer.from([0]));
        await sleep(10);
        s.destroy();
      },
    },
    {
      what: 'cut mid-frame (RST)',
      frames: 2,
      minAnswers: 0,
      run: async (s) => {
        const f = Buffer.concat([good(1), good(2)]);
        s.write(f.subarray(0, f.length - 1 - fuzz.int(10)));
        await sleep(10);
        s.resetAndDestroy();
      },
    },
    {
      what: 'cut mid-frame (FIN)',
      frames: 1,
      minAnswers: 0,
      run: async (s) => {
        const f = good(3);
        s.end(f.subarray(0, 2 + fuzz.int(f.length - 2)));
      },
    },
    {
      what: 'prefix 65535 with a few bytes behind it, then cut',
      frames: 1,
      minAnswers: 0,
      run: async (s) => {
        s.write(Buffer.concat([Buffer.from([0xff, 0xff]), fuzz.bytes(1 + fuzz.int(600))]));
        await sleep(20);
        s.destroy();
      },
    },
    {
      what: 'prefix 65535 with a whole 65535-byte message of junk, then a good query',
      frames: 2,
      minAnswers: 0,
      run: async (s) => {
        s.write(Buffer.concat([Buffer.from([0xff, 0xff]), fuzz.bytes(65535), good(4)]));
        await sleep(50);
        s.end();
      },
    },
  ];
}

/** What the kernel says it dropped for full UDP receive buffers (this network namespace, everyone's sockets). */
export function udpRcvbufErrors(): number {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0]!.split(/\s+/);
    const values = lines[1]!.split(/\s+/);
    return Number(values[names.indexOf('RcvbufErrors')] ?? 0);
  } catch {
    return 0;
  }
}
