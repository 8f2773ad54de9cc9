/**
 * The isolation bench's hit probe, a process of its own so it can run at
 * real-time priority (`chrt -f 50`) on the flooded CPU: woken at once when
 * an answer arrives, its own scheduling behind the flood does not count.
 * It never spins (a SCHED_FIFO busy loop would take the CPU from everything
 * else on it): a 1 ms timer sends what the schedule says is due.
 *
 *   node hit-probe.js warm  --host H --port P --names N           ask each name once, until all answered (bounded)
 *   node hit-probe.js probe --host H --port P --names N --rate R --seconds S
 *
 * Names are the simulator's listed services (svc-<i>.ns-<j>), type A. Prints
 * one JSON line: a ProbeResult or WarmResult. Loopback only (the caller's
 * host is checked).
 *
 * HIT_PROBE_TRACE=DIR (diagnostic, off by default): probe mode also writes
 * DIR/probe-<start ms>-<pid>.bin, one row of 3 float64s per query: the key
 * (its source port * 65536 + id, as the agent's NODELOCAL_RX_TRACE rows),
 * the send and the receive time (NaN: no answer), CLOCK_REALTIME microseconds
 * (performance.timeOrigin + now()), for bench/rx-trace-join.ts.
 */
import dgram from 'node:dgram';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Verdict, checkResponse } from './check.js';
import { rcodeName } from './dnsperf.js';
import { isLoopback } from './targets.js';
import { DEFAULT_ZONES, QTYPE_A, serviceFqdn } from './sim/zones.js';
import { makeTemplate, type QueryTemplate } from './wire.js';

export interface ProbeResult {
  readonly sent: number;
  readonly answered: number;
  /** Answers that were not the zone's A records for the name asked (checked as the main bench checks). */
  readonly wrong: number;
  /** The wrong answers by rcode (NOERROR here: another question, or not the zone's records). */
  readonly wrongRcodes: Readonly<Record<string, number>>;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly p999Us: number;
  readonly maxUs: number;
  /** How late the probe's own sends were against its schedule (99th percentile, us): its CPU, not the agent's. */
  readonly sendLagP99Us: number;
}

export interface WarmResult {
  readonly names: number;
  readonly answered: number;
  readonly wrong: number;
}

/** The probe's names: listed services, namespace-major, as many as asked (at most the zone's). */
export function probeNames(count: number): string[] {
  const z = DEFAULT_ZONES;
  const n = Math.min(count, z.namespaces * z.servicesPerNamespace);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(serviceFqdn(i % z.servicesPerNamespace, Math.floor(i / z.servicesPerNamespace), z));
  return out;
}

/** Type A queries for the names (id 0, RD), each with what the zone answers: a cache that hands out another name's entry answers wrong. */
function templates(names: readonly string[]): QueryTemplate[] {
  return names.map((n) => makeTemplate(n, QTYPE_A, DEFAULT_ZONES));
}

const good = (m: Buffer, t: QueryTemplate): boolean => checkResponse(m, t, 0) === Verdict.OK;

/** Nearest rank, as the main bench's percentiles: the smallest value with at least p of the samples at or below it. */
function pct(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

const WARM_LIMIT_MS = 30_000;
const WARM_RETRY_MS = 300;
const WARM_WINDOW = 200;
const ANSWER_GRACE_MS = 1000;

function warm(sock: dgram.Socket, host: string, port: number, names: string[]): Promise<WarmResult> {
  const queries = templates(names);
  const pending = new Set<number>();
  let next = 0;
  let answered = 0;
  let wrong = 0;
  const send = (i: number): void => {
    const q = Buffer.from(queries[i]!.wire);
    q.writeUInt16BE(i & 0xffff, 0);
    sock.send(q, port, host);
  };
  const refill = (): void => {
    while (pending.size < WARM_WINDOW && next < names.length) {
      pending.add(next);
      send(next++);
    }
  };
  return new Promise((resolve) => {
    const finish = (): void => {
      clearInterval(retry);
      clearTimeout(limit);
      resolve({ names: names.length, answered, wrong });
    };
    sock.on('message', (m) => {
      if (m.length < 12) return;
      // Ids are name indexes modulo 65536; with at most WARM_WINDOW outstanding they cannot collide.
      const id = m.readUInt16BE(0);
      let i = -1;
      for (const p of pending) if ((p & 0xffff) === id) i = p;
      if (i < 0) return;
      pending.delete(i);
      answered++;
      if (!good(m, queries[i]!)) wrong++;
      refill();
      if (pending.size === 0) finish();
    });
    const retry = setInterval(() => {
      for (const i of pending) send(i);
    }, WARM_RETRY_MS);
    const limit = setTimeout(finish, WARM_LIMIT_MS);
    refill();
    if (names.length === 0) finish();
  });
}

function probe(sock: dgram.Socket, host: string, port: number, names: string[], rate: number, seconds: number): Promise<ProbeResult> {
  const queries = templates(names);
  const total = Math.max(1, Math.round(rate * seconds));
  // Send time per id (ms, performance.now()); NaN: nothing outstanding. Ids wrap after 65536 sends.
  const sentAt = new Float64Array(65536).fill(NaN);
  // The name each id asked, to check its answer against.
  const askedBy = new Int32Array(65536);
  const rtt = new Float64Array(total);
  const lag = new Float64Array(total);
  let sent = 0;
  let answered = 0;
  let wrong = 0;
  const wrongRcodes: Record<string, number> = {};
  const traceDir = process.env['HIT_PROBE_TRACE'] ?? '';
  // Per query: key, send and receive time (realtime us); NaN receive: unanswered.
  const trace = traceDir === '' ? null : new Float64Array(total * 3).fill(NaN);
  const origin = performance.timeOrigin;
  const keyBase = sock.address().port * 65536;
  sock.on('message', (m) => {
    const now = performance.now();
    if (m.length < 12) return;
    const id = m.readUInt16BE(0);
    const t0 = sentAt[id]!;
    if (Number.isNaN(t0)) return;
    sentAt[id] = NaN;
    if (!good(m, queries[askedBy[id]!]!)) {
      wrong++;
      const rcode = rcodeName(m[3]! & 0x0f);
      wrongRcodes[rcode] = (wrongRcodes[rcode] ?? 0) + 1;
    }
    if (answered < total) rtt[answered++] = (now - t0) * 1000;
    if (trace !== null) {
      // Ids wrap at 65536 sends: the latest send of this id is the one answered (at most one outstanding per id).
      for (let q = id; q < total; q += 65536) if (trace[q * 3 + 1] === (origin + t0) * 1000) trace[q * 3 + 2] = (origin + now) * 1000;
    }
  });
  return new Promise((resolve) => {
    const start = performance.now();
    const tick = setInterval(() => {
      const now = performance.now();
      const due = Math.min(total, Math.floor(((now - start) / 1000) * rate));
      for (; sent < due; sent++) {
        const id = sent & 0xffff;
        const q = Buffer.from(queries[sent % queries.length]!.wire);
        q.writeUInt16BE(id, 0);
        askedBy[id] = sent % queries.length;
        lag[sent] = (now - (start + (sent * 1000) / rate)) * 1000;
        sentAt[id] = performance.now();
        if (trace !== null) {
          trace[sent * 3] = keyBase + id;
          trace[sent * 3 + 1] = (origin + sentAt[id]!) * 1000;
        }
        sock.send(q, port, host);
      }
      if (sent >= total) {
        clearInterval(tick);
        setTimeout(() => {
          if (trace !== null) writeFileSync(path.join(traceDir, `probe-${Math.round(origin + start)}-${process.pid}.bin`), new Uint8Array(trace.buffer));
          const r = rtt.subarray(0, answered).sort();
          const l = lag.subarray(0, sent).sort();
          resolve({
            sent, answered, wrong, wrongRcodes,
            p50Us: pct(r, 0.5), p99Us: pct(r, 0.99), p999Us: pct(r, 0.999), maxUs: r.length > 0 ? r[r.length - 1]! : NaN,
            sendLagP99Us: pct(l, 0.99),
          });
        }, ANSWER_GRACE_MS);
      }
    }, 1);
  });
}

function arg(argv: readonly string[], name: string): string {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`hit-probe: --${name} is required`);
  return v;
}

async function main(argv: readonly string[]): Promise<void> {
  const mode = argv[0];
  const host = arg(argv, 'host');
  if (!isLoopback(host)) throw new Error(`hit-probe: ${host} is not a loopback address`);
  const port = Number(arg(argv, 'port'));
  const names = probeNames(Number(arg(argv, 'names')));
  const sock = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
  await new Promise<void>((resolve) => sock.bind(0, host.includes(':') ? '::1' : '127.0.0.1', resolve));
  let out: ProbeResult | WarmResult;
  if (mode === 'warm') out = await warm(sock, host, port, names);
  else if (mode === 'probe') out = await probe(sock, host, port, names, Number(arg(argv, 'rate')), Number(arg(argv, 'seconds')));
  else throw new Error(`hit-probe: mode warm or probe, not ${String(mode)}`);
  sock.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** This file's path, for spawning it (hit-probe.js in dist/, hit-probe.ts from source). */
export const HIT_PROBE_SCRIPT = fileURLToPath(import.meta.url);

// Run only as a program: the bench imports probeNames from here.
if (path.resolve(process.argv[1] ?? '') === HIT_PROBE_SCRIPT) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
