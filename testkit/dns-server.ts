/**
 * A programmable DNS server on loopback: the fake kube-dns and fake host
 * resolver of the tests, and the upstream simulator of the bench. Faults
 * (latency, loss, truncation, connection closes, reordering, spoofing) are
 * mutable at run time so one server can walk through a scenario.
 *
 * dns-packet decodes and encodes here: this is a test tool, not the hot path.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { DecodedPacket, Packet } from 'dns-packet';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { responseFlags } from './static-handler.js';
import { defaultFaults, emptyStats, type SimContext, type SimFaults, type SimHandler, type SimStats, type SimStartOptions } from './sim-types.js';

export { staticHandler, type StaticRecord, type StaticHandlerOptions } from './static-handler.js';
export type { SimContext, SimFaults, SimHandler, SimStats, SimStartOptions } from './sim-types.js';

const RCODES: Record<string, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };
/** How long reorderTcp holds answers so that several pile up to be reversed. */
const REORDER_HOLD_MS = 10;
/** A closed connection whose peer never closes its side is destroyed after this. */
const LINGER_MS = 1000;
const PORT_TRIES = 20;
/** A restart waits up to RESTART_TRIES x 50 ms for its port. */
const RESTART_TRIES = 100;

interface TcpConn {
  readonly socket: net.Socket;
  readonly decoder: FrameDecoder;
  queries: number;
  closing: boolean;
  seq: number;
  held: Array<{ seq: number; bytes: Buffer }>;
  flushTimer: NodeJS.Timeout | null;
}

export class SimDnsServer {
  readonly host: string;
  #port: number;
  readonly faults: SimFaults;
  readonly stats: SimStats;
  readonly #handler: SimHandler;
  readonly #useUdp: boolean;
  readonly #useTcp: boolean;
  #udp: dgram.Socket | null = null;
  #tcp: net.Server | null = null;
  readonly #conns = new Set<TcpConn>();
  #state: 'stopped' | 'running' | 'closed' = 'stopped';

  private constructor(opts: SimStartOptions) {
    this.host = opts.host ?? '127.0.0.1';
    this.#port = opts.port ?? 0;
    this.#handler = opts.handler;
    this.#useUdp = opts.udp ?? true;
    this.#useTcp = opts.tcp ?? true;
    this.faults = defaultFaults(opts.faults);
    this.stats = emptyStats();
  }

  static async start(opts: SimStartOptions): Promise<SimDnsServer> {
    const s = new SimDnsServer(opts);
    await s.#listen(opts.port === undefined || opts.port === 0);
    return s;
  }

  get port(): number {
    return this.#port;
  }
  get openTcpConnections(): number {
    return this.#conns.size;
  }

  /** In place, so references to `stats` held by a harness stay live. */
  resetStats(): void {
    Object.assign(this.stats, emptyStats());
  }

  async stop(): Promise<void> {
    if (this.#state !== 'running') return;
    this.#state = 'stopped';
    await this.#closeSockets();
  }

  async restart(): Promise<void> {
    if (this.#state === 'closed') throw new Error('SimDnsServer: restart after close');
    if (this.#state === 'running') return;
    await this.#listen(false, true);
  }

  async close(): Promise<void> {
    const wasRunning = this.#state === 'running';
    this.#state = 'closed';
    if (wasRunning) await this.#closeSockets();
  }

  /**
   * With an ephemeral port, TCP picks it and UDP must get the same one; retry if UDP finds it taken. A restart
   * (`waitForPort`) wants the port it had, free only while no socket took it meanwhile (an outgoing connection's
   * local port, a client's UDP socket, a reconnect that connected to itself): a holder that lets go within a few
   * seconds is waited for.
   */
  async #listen(ephemeral: boolean, waitForPort = false): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        const port = ephemeral ? 0 : this.#port;
        if (this.#useTcp) this.#port = await this.#listenTcp(port);
        if (this.#useUdp) this.#port = await this.#bindUdp(this.#useTcp ? this.#port : port);
        this.#state = 'running';
        return;
      } catch (err) {
        await this.#closeSockets();
        const inUse = (err as NodeJS.ErrnoException).code === 'EADDRINUSE';
        if (inUse && waitForPort && i < RESTART_TRIES) {
          await new Promise((r) => setTimeout(r, 50));
          if (this.#state === 'closed') throw err;
          continue;
        }
        if (!ephemeral || !inUse || i >= PORT_TRIES) throw err;
      }
    }
  }

  #listenTcp(port: number): Promise<number> {
    const server = net.createServer({ noDelay: true }, (socket) => this.#onTcpConnection(socket));
    this.#tcp = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.host, port, exclusive: true }, () => {
        server.off('error', reject);
        server.on('error', () => {});
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  }

  #bindUdp(port: number): Promise<number> {
    const sock = dgram.createSocket(net.isIPv6(this.host) ? 'udp6' : 'udp4');
    this.#udp = sock;
    return new Promise((resolve, reject) => {
      sock.once('error', reject);
      sock.bind({ address: this.host, port, exclusive: true }, () => {
        sock.off('error', reject);
        sock.on('error', () => {});
        sock.on('message', (msg, rinfo) => this.#onUdp(sock, msg, rinfo));
        resolve(sock.address().port);
      });
    });
  }

  async #closeSockets(): Promise<void> {
    for (const c of this.#conns) this.#dropConn(c, true);
    const udp = this.#udp;
    const tcp = this.#tcp;
    this.#udp = null;
    this.#tcp = null;
    const waits: Array<Promise<void>> = [];
    if (udp !== null) waits.push(new Promise((r) => { try { udp.close(() => r()); } catch { r(); } }));
    if (tcp !== null) waits.push(new Promise((r) => { if (tcp.listening) tcp.close(() => r()); else r(); }));
    await Promise.all(waits);
  }

  #onUdp(sock: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const ctx: SimContext = { transport: 'udp', remoteAddress: rinfo.address, remotePort: rinfo.port };
    this.#onQuery(msg, ctx, (out, query) => {
      if (this.#udp !== sock) return false;
      const send = (b: Buffer): void => {
        try { sock.send(b, rinfo.port, rinfo.address); } catch { /* socket closed meanwhile */ }
      };
      if (this.faults.spoofFirst) {
        const wrongId = Buffer.from(out);
        wrongId.writeUInt16BE((out.readUInt16BE(0) + 1) & 0xffff, 0);
        send(wrongId);
        const q = query.questions?.[0];
        if (q !== undefined) {
          send(dnsPacket.encode({ ...dnsPacket.decode(out), questions: [{ ...q, name: 'spoofed.' + q.name }] }));
        }
      }
      send(out);
      return true;
    });
  }

  #onTcpConnection(socket: net.Socket): void {
    if (this.#state !== 'running') { socket.destroy(); return; }
    this.stats.tcpConnections++;
    const conn: TcpConn = {
      socket, queries: 0, closing: false, seq: 0, held: [], flushTimer: null,
      decoder: new FrameDecoder((msg) => this.#onTcpFrame(conn, msg)),
    };
    this.#conns.add(conn);
    socket.on('data', (chunk) => { if (!conn.closing) conn.decoder.push(chunk); });
    socket.on('error', () => {});
    socket.on('close', () => this.#dropConn(conn, false));
  }

  #onTcpFrame(conn: TcpConn, msg: Buffer): void {
    if (conn.closing) return;
    conn.queries++;
    const limit = this.faults.closeAfterQueries;
    if (limit > 0 && conn.queries >= limit) {
      this.stats.tcpQueries++;
      this.stats.dropped++;
      this.#dropConn(conn, false);
      return;
    }
    const seq = conn.seq++;
    const ctx: SimContext = { transport: 'tcp', remoteAddress: conn.socket.remoteAddress ?? '', remotePort: conn.socket.remotePort ?? 0 };
    this.#onQuery(msg, ctx, (out) => {
      if (conn.closing || !conn.socket.writable) return false;
      if (!this.faults.reorderTcp) {
        conn.socket.write(frame(out));
        return true;
      }
      conn.held.push({ seq, bytes: out });
      conn.flushTimer ??= setTimeout(() => this.#flushHeld(conn), REORDER_HOLD_MS);
      return true;
    });
  }

  #flushHeld(conn: TcpConn): void {
    conn.flushTimer = null;
    const held = conn.held.sort((a, b) => b.seq - a.seq);
    conn.held = [];
    if (conn.closing || !conn.socket.writable) return;
    for (const h of held) conn.socket.write(frame(h.bytes));
  }

  /** `immediate` for stop/close (simulate a crash); otherwise a graceful FIN, as CoreDNS closing an idle or busy connection. */
  #dropConn(conn: TcpConn, immediate: boolean): void {
    if (conn.flushTimer !== null) clearTimeout(conn.flushTimer);
    conn.flushTimer = null;
    conn.held = [];
    if (!conn.closing) {
      conn.closing = true;
      if (immediate) conn.socket.destroy();
      else {
        conn.socket.end();
        setTimeout(() => conn.socket.destroy(), LINGER_MS).unref();
      }
    } else if (immediate) conn.socket.destroy();
    if (conn.socket.destroyed || immediate) this.#conns.delete(conn);
  }

  /**
   * Shared by both transports: decode, count, apply faults, ask the handler,
   * wait out the latency, then `send` (which returns false when the answer
   * can no longer be delivered, e.g. the connection went away).
   */
  #onQuery(msg: Buffer, ctx: SimContext, send: (out: Buffer, query: DecodedPacket) => boolean): void {
    let query: DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      this.stats.dropped++;
      return;
    }
    if (ctx.transport === 'udp') this.stats.udpQueries++;
    else this.stats.tcpQueries++;
    const qname = (query.questions?.[0]?.name ?? '').toLowerCase();
    this.stats.byName.set(qname, (this.stats.byName.get(qname) ?? 0) + 1);
    const f = this.faults;
    if (f.dropAll || (f.lossRate > 0 && Math.random() < f.lossRate)) {
      this.stats.dropped++;
      return;
    }
    const finish = (answer: Packet | null): void => {
      if (answer === null || this.#state !== 'running') {
        this.stats.dropped++;
        return;
      }
      let bytes: Buffer;
      try {
        bytes = dnsPacket.encode(this.#complete(query, answer, ctx.transport));
      } catch {
        this.stats.dropped++;
        return;
      }
      const delay = f.latencyMs + (f.jitterMs > 0 ? Math.random() * f.jitterMs : 0);
      const deliver = (): void => {
        if (this.#state === 'running' && send(bytes, query)) this.stats.answered++;
        else this.stats.dropped++;
      };
      if (delay > 0) setTimeout(deliver, delay);
      else deliver();
    };
    if (f.rcode !== null) {
      finish({ flags: responseFlags(query, RCODES[f.rcode.toUpperCase()] ?? 2) });
      return;
    }
    let result: Packet | null | Promise<Packet | null>;
    try {
      result = this.#handler(query, ctx);
    } catch {
      this.stats.dropped++;
      return;
    }
    if (result instanceof Promise) result.then(finish, () => { this.stats.dropped++; });
    else finish(result);
  }

  #complete(query: DecodedPacket, answer: Packet, transport: 'udp' | 'tcp'): Packet {
    const out: Packet = {
      ...answer,
      type: 'response',
      id: answer.id ?? query.id ?? 0,
      flags: answer.flags ?? responseFlags(query, 0),
      questions: answer.questions ?? query.questions ?? [],
    };
    if (transport === 'udp' && this.faults.truncateUdp) {
      return { type: 'response', id: out.id, flags: (out.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE, questions: out.questions ?? [] };
    }
    return out;
  }
}
