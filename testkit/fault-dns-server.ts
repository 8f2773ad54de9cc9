/**
 * A fake DNS server (TCP and UDP on one loopback port) that misbehaves on
 * command, byte by byte where SimDnsServer only speaks well-formed packets:
 * for test/faults.test.ts. Each query is answered according to `mode` at the
 * moment it arrives:
 *   good      the right answer (A records from `records`, else NXDOMAIN + SOA)
 *   garbage   random bytes behind the query's id (matches, cannot be read)
 *   wrong-id  the right answer under another id
 *   slow      the right answer after `slowMs`
 *   close     TCP: the connection is cut (FIN) without an answer; UDP: nothing
 *   silent    nothing at all
 * `records` may change between queries (what a late answer carries is what
 * was true when the query arrived).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { FrameDecoder, frame } from '../src/dns/framing.js';

export type FaultMode = 'good' | 'garbage' | 'wrong-id' | 'slow' | 'close' | 'silent';

export class FaultDnsServer {
  mode: FaultMode = 'good';
  slowMs = 1000;
  /** Lower-case name -> IPv4 addresses (TTL `ttl`). */
  readonly records = new Map<string, string[]>();
  ttl = 30;
  /** Queries received, by transport. */
  tcpQueries = 0;
  udpQueries = 0;
  readonly #tcp: net.Server;
  readonly #udp: dgram.Socket;
  readonly #conns = new Set<net.Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  port = 0;

  private constructor() {
    this.#tcp = net.createServer((s) => this.#onConn(s));
    this.#udp = dgram.createSocket('udp4');
  }

  /**
   * TCP picks an ephemeral port and UDP takes the same one. A UDP socket elsewhere may hold it already (any
   * client socket bound to 0.0.0.0 on that port): then the pair is given up and another port tried (bounded).
   */
  static async start(): Promise<FaultDnsServer> {
    for (let tries = 0; ; tries++) {
      const s = new FaultDnsServer();
      try {
        await s.#listen();
        return s;
      } catch (err) {
        s.#tcp.close();
        try { s.#udp.close(); } catch { /* never bound */ }
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || tries >= 20) throw err;
      }
    }
  }

  async #listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#tcp.once('error', reject);
      this.#tcp.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.#tcp.address() as net.AddressInfo).port;
    await new Promise<void>((resolve, reject) => {
      this.#udp.once('error', reject);
      this.#udp.bind(this.port, '127.0.0.1', () => resolve());
    });
    this.#udp.on('message', (m, r) => {
      this.udpQueries++;
      this.#answer(m, (b) => this.#udp.send(b, r.port, r.address), () => {});
    });
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    for (const c of this.#conns) c.destroy();
    await Promise.all([
      new Promise<void>((r) => this.#tcp.close(() => r())),
      new Promise<void>((r) => this.#udp.close(() => r())),
    ]);
  }

  #onConn(s: net.Socket): void {
    this.#conns.add(s);
    s.on('close', () => this.#conns.delete(s));
    s.on('error', () => {});
    const dec = new FrameDecoder((f) => {
      this.tcpQueries++;
      this.#answer(Buffer.from(f), (b) => {
        if (s.writable) s.write(frame(b));
      }, () => s.end());
    });
    s.on('data', (c) => dec.push(c));
  }

  /** The right answer to `q`, as records say now (null if the query cannot be read). */
  answerTo(q: Buffer): Buffer | null {
    let p: dnsPacket.DecodedPacket;
    try {
      p = dnsPacket.decode(q);
    } catch {
      return null;
    }
    const question = p.questions?.[0];
    if (question === undefined) return null;
    const ips = question.type === 'A' ? this.records.get(question.name.toLowerCase()) : undefined;
    const flags = dnsPacket.RECURSION_AVAILABLE | ((p.flags ?? 0) & dnsPacket.RECURSION_DESIRED);
    if (ips === undefined) {
      return dnsPacket.encode({
        type: 'response', id: p.id ?? 0, flags: flags | 3, questions: [question],
        authorities: [{ type: 'SOA', name: 'cluster.local', ttl: 30, class: 'IN', data: { mname: 'ns.fault.invalid', rname: 'h.fault.invalid', serial: 1, refresh: 60, retry: 60, expire: 60, minimum: 30 } }],
      });
    }
    return dnsPacket.encode({
      type: 'response', id: p.id ?? 0, flags, questions: [question],
      answers: ips.map((ip) => ({ type: 'A' as const, name: question.name, ttl: this.ttl, class: 'IN' as const, data: ip })),
    });
  }

  #answer(q: Buffer, send: (b: Buffer) => void, close: () => void): void {
    const good = this.answerTo(q);
    switch (this.mode) {
      case 'silent':
        return;
      case 'close':
        close();
        return;
      case 'garbage': {
        const junk = Buffer.alloc(12 + Math.floor(Math.random() * 60));
        for (let i = 2; i < junk.length; i++) junk[i] = Math.floor(Math.random() * 256);
        junk[0] = q[0] ?? 0;
        junk[1] = q[1] ?? 0;
        junk[2] = (junk[2]! | 0x80) & ~0x02; // a response, not truncated: something to read, nothing readable
        send(junk);
        return;
      }
      case 'wrong-id': {
        if (good === null) return;
        good.writeUInt16BE((good.readUInt16BE(0) + 1 + Math.floor(Math.random() * 1000)) & 0xffff, 0);
        send(good);
        return;
      }
      case 'slow': {
        if (good === null) return;
        const t = setTimeout(() => {
          this.#timers.delete(t);
          send(good);
        }, this.slowMs);
        this.#timers.add(t);
        return;
      }
      case 'good':
        if (good !== null) send(good);
        return;
    }
  }
}
