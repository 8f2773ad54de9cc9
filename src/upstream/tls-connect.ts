/**
 * Opens the TLS connections of one DNS-over-TLS server for TcpPool (its
 * `connect` option): certificate chain checked against the trusted CAs, the
 * certificate's name against the configured one, TLS 1.2 at least, ALPN
 * "dot" (RFC 7858 3.2 allows it; servers that do not speak ALPN ignore it).
 *
 * There is deliberately no switch to skip verification: an unverified DoT
 * connection protects against nothing an on-path attacker does, while the
 * operator believes it does.
 *
 * Session resumption: the newest session ticket the server gave us is
 * offered on the next connect, so a reconnect after the server closed an idle
 * connection (Cloudflare's after 10 s or so) costs one round trip less and no
 * certificate work. The resumed session was verified when it was made (Node
 * does not resume a session for a different servername).
 */
import { X509Certificate } from 'node:crypto';
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from '../log.js';
import { formatTlsServer, type TlsServer } from './tls-address.js';

/** Keep-alive as the cluster pool sets it: a dead peer behind a NAT is found while idle. */
const KEEPALIVE_DELAY_MS = 30_000;

export class TlsConnector {
  readonly server: TlsServer;
  readonly #ca: readonly (string | Buffer)[] | undefined;
  readonly #log: Logger;
  #session: Buffer | null;
  /** The last certificate or handshake error logged, so a dead server is one warning, not one per reconnect. */
  #lastLoggedError: string;
  #handshakes: number;
  #resumed: number;

  /** `ca`: PEM certificates that replace the default trust store (--tls-ca-file); undefined = Node's bundled Mozilla roots. */
  constructor(server: TlsServer, ca: readonly (string | Buffer)[] | undefined, log: Logger) {
    this.server = server;
    this.#ca = ca;
    this.#log = log;
    this.#session = null;
    this.#lastLoggedError = '';
    this.#handshakes = 0;
    this.#resumed = 0;
  }

  /** Completed handshakes, and how many of them resumed a session (for tests and debugging). */
  get handshakes(): number {
    return this.#handshakes;
  }

  get resumed(): number {
    return this.#resumed;
  }

  /** Bound once: TcpPool calls it for every connect. */
  readonly connect = (): net.Socket => {
    const s = this.server;
    const socket = tls.connect({
      host: s.host,
      port: s.port,
      // Without a name Node checks the certificate against the IP (checkServerIdentity), and sends no SNI.
      ...(s.serverName !== null ? { servername: s.serverName } : {}),
      ...(this.#ca !== undefined ? { ca: [...this.#ca] } : {}),
      ...(this.#session !== null ? { session: this.#session } : {}),
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ALPNProtocols: ['dot'],
    });
    // Applied when the TCP connection is up (tls.connect's options do not take them).
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_DELAY_MS);
    // Two closures per connection (not per query): the error handler must know whether the handshake had completed.
    let secured = false;
    socket.on('session', this.#onSession);
    socket.once('secureConnect', () => {
      secured = true;
      this.#onSecure(socket);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => this.#onError(err, secured));
    return socket;
  };

  readonly #onSession = (session: Buffer): void => {
    this.#session = session;
  };

  #onSecure(socket: tls.TLSSocket): void {
    this.#handshakes++;
    if (socket.isSessionReused()) this.#resumed++;
    if (this.#lastLoggedError !== '') {
      this.#log.info('dns-over-tls server verified again', { upstream: formatTlsServer(this.server) });
      this.#lastLoggedError = '';
    }
  }

  #onError(err: NodeJS.ErrnoException, secured: boolean): void {
    const code = err.code ?? err.message;
    if (secured) {
      // A reset of a verified connection: the pool reconnects; nothing for the operator.
      this.#log.debug('dns-over-tls connection error', { upstream: formatTlsServer(this.server), code });
      return;
    }
    // A failed handshake starts from scratch next time: a ticket the server no longer takes must not stick.
    this.#session = null;
    // A certificate that does not verify is a configuration error or an attack: one warning per distinct cause, not one per reconnect.
    if (code === this.#lastLoggedError) return;
    this.#lastLoggedError = code;
    this.#log.warn('dns-over-tls connect or handshake failed: nothing is sent to this server until it connects and verifies', {
      upstream: formatTlsServer(this.server),
      code,
      error: err.message,
    });
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * The certificates of --tls-ca-file, each parsed. Node takes a `ca` that holds
 * no certificate (or garbage) without complaint and then fails every
 * handshake; this says so at start (or on reload) instead. Throws an Error
 * naming the file.
 */
export function loadCaFile(path: string, readFile: (path: string) => string): string[] {
  let text: string;
  try {
    text = readFile(path);
  } catch (err) {
    throw new Error(`--tls-ca-file ${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const pems = text.match(PEM_CERT) ?? [];
  if (pems.length === 0) throw new Error(`--tls-ca-file ${path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it`);
  for (const [i, pem] of pems.entries()) {
    try {
      new X509Certificate(pem);
    } catch (err) {
      throw new Error(`--tls-ca-file ${path}: certificate ${i + 1} does not parse (${(err as Error).message})`);
    }
  }
  return pems;
}
