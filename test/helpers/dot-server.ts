// Test fixtures for DNS over TLS: certificates made with the openssl CLI at
// test time (a CA, leaves signed by it, a second CA nobody trusts), and a
// DNS-over-TLS server on loopback answering A queries from a small table.
// Everything counts what it saw, so tests can assert on connections,
// pipelining and resumption without timing.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import * as dnsPacket from 'dns-packet';
import { FrameDecoder, frame } from '../../src/dns/framing.js';
import { a, answer } from '../kit/dns.js';

export const OPENSSL = '/usr/bin/openssl';

export function opensslAvailable(): boolean {
  return existsSync(OPENSSL);
}

export interface KeyPair {
  key: string;
  cert: string;
}

/** A CA of the test's own; `issue` signs leaves for a DNS name or an IP. Two-day validity: only ever used at test time. */
export class TestCa {
  readonly dir: string;
  readonly certPath: string;
  readonly #keyPath: string;
  #serial: number;

  constructor(name: string) {
    this.dir = mkdtempSync(join(tmpdir(), `nldns-dot-${name}-`));
    this.certPath = join(this.dir, 'ca.pem');
    this.#keyPath = join(this.dir, 'ca.key');
    this.#serial = 1;
    openssl([
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', this.#keyPath, '-out', this.certPath, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
  }

  get cert(): string {
    return readFileSync(this.certPath, 'utf8');
  }

  /** `san`: "DNS:dns.test" or "IP:127.0.0.1". */
  issue(san: string, usage: 'serverAuth' | 'clientAuth' = 'serverAuth'): KeyPair {
    const base = join(this.dir, `leaf${this.#serial}`);
    const cn = san.slice(san.indexOf(':') + 1);
    writeFileSync(`${base}.ext`, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=${usage}\nkeyUsage=digitalSignature\n`);
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`]);
    openssl([
      'x509', '-req', '-in', `${base}.csr`, '-CA', this.certPath, '-CAkey', this.#keyPath, '-set_serial', String(this.#serial++),
      '-out', `${base}.pem`, '-days', '2', '-extfile', `${base}.ext`,
    ]);
    return { key: readFileSync(`${base}.key`, 'utf8'), cert: readFileSync(`${base}.pem`, 'utf8') };
  }
}

function openssl(args: string[]): void {
  execFileSync(OPENSSL, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
}

export interface DotServerOptions {
  /** name -> IPv4 answered for A; anything else gets NXDOMAIN. */
  records: Record<string, string>;
  /** Close each connection (FIN) after this many answers on it. */
  closeAfterAnswers?: number;
  /** Hold answers until this many queries are pending across all connections, then answer them all. */
  holdUntilPending?: number;
  /** Names answered SERVFAIL (a lame or bogus domain the resolver cannot resolve). */
  servfail?: readonly string[];
  /** Answer with an OPT padded to 468 bytes (RFC 8467 4.1, what a padding server sends a padded query). */
  padAnswers?: boolean;
}

interface Pending {
  reply: (msg: Buffer) => void;
  msg: Buffer;
}

export class DotServer {
  readonly #server: tls.Server;
  readonly #opts: DotServerOptions;
  readonly #sockets: Set<tls.TLSSocket>;
  readonly #held: Pending[];
  /** Handshakes completed, and how many resumed a session. */
  connections: number;
  resumed: number;
  /** Queries received, and the most received on one connection before it was answered. */
  queries: number;
  /** The last query received, as it came. */
  lastQuery: Buffer | null;
  maxPendingOnOneConnection: number;
  /** TLS errors on the server side (a client refusing our certificate shows here as an alert). */
  clientErrors: number;
  port: number;

  constructor(pair: KeyPair, opts: DotServerOptions) {
    this.#opts = opts;
    this.#sockets = new Set();
    this.#held = [];
    this.connections = 0;
    this.resumed = 0;
    this.queries = 0;
    this.lastQuery = null;
    this.maxPendingOnOneConnection = 0;
    this.clientErrors = 0;
    this.port = 0;
    this.#server = tls.createServer({ key: pair.key, cert: pair.cert, ALPNProtocols: ['dot'], minVersion: 'TLSv1.2' }, (socket) => this.#onConnection(socket));
    this.#server.on('tlsClientError', () => {
      this.clientErrors++;
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.#server.address() as AddressInfo).port;
    return this.port;
  }

  /** Answers every held query now (holdUntilPending), each on the connection it came in on. */
  releaseHeld(): void {
    for (const p of this.#held.splice(0)) p.reply(p.msg);
  }

  /** Drops every open connection (a server restart, as the client sees it). */
  dropConnections(): void {
    for (const s of this.#sockets) s.destroy();
  }

  close(): Promise<void> {
    this.dropConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #onConnection(socket: tls.TLSSocket): void {
    this.connections++;
    if (socket.isSessionReused()) this.resumed++;
    this.#sockets.add(socket);
    let answered = 0;
    let pending = 0;
    const reply = (msg: Buffer): void => {
      pending--;
      if (socket.destroyed || !socket.writable) return;
      socket.write(frame(this.#answer(msg)));
      answered++;
      if (this.#opts.closeAfterAnswers !== undefined && answered >= this.#opts.closeAfterAnswers) socket.end();
    };
    const decoder = new FrameDecoder((f) => {
      const msg = Buffer.from(f);
      this.queries++;
      this.lastQuery = msg;
      pending++;
      this.maxPendingOnOneConnection = Math.max(this.maxPendingOnOneConnection, pending);
      const hold = this.#opts.holdUntilPending;
      if (hold === undefined) {
        reply(msg);
        return;
      }
      // Each held query is answered on the connection it came in on.
      this.#held.push({ reply, msg });
      if (this.#held.length >= hold) for (const p of this.#held.splice(0)) p.reply(p.msg);
    });
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.#sockets.delete(socket));
  }

  #answer(msg: Buffer): Buffer {
    const q = dnsPacket.decode(msg);
    const question = q.questions?.[0];
    const id = q.id ?? 0;
    if (question === undefined) return answer('.', [], { id, rcode: 'FORMERR' });
    if (this.#opts.servfail?.includes(question.name.toLowerCase()) === true) return answer(question.name, [], { id, type: question.type, rcode: 'SERVFAIL' });
    const ip = this.#opts.records[question.name.toLowerCase()];
    if (question.type === 'A' && ip !== undefined) {
      const additionals: dnsPacket.Answer[] = this.#opts.padAnswers === true ? [{ type: 'OPT', name: '.', udpPayloadSize: 1232, options: [{ code: 12, data: Buffer.alloc(380) }] } as dnsPacket.Answer] : [];
      return answer(question.name, [a(question.name, ip)], { id, additionals });
    }
    return answer(question.name, [], { id, type: question.type, rcode: ip === undefined ? 'NXDOMAIN' : 'NOERROR' });
  }
}
