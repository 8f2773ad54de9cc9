/**
 * A kubeconfig user's exec credential plugin (client.authentication.k8s.io
 * ExecCredential), run by us rather than by client-node: client-node runs
 * the plugin afresh for every request that finds no unexpired credential,
 * with no deadline and no sharing, so a plugin that hangs (a cloud token
 * service out of reach) left one more process behind for each request and
 * each retry of every reflector, for ever.
 *
 * Here one run at a time serves every request waiting (client-go's exec
 * authenticator holds a lock the same way), and a run that has not answered
 * within its deadline is killed and fails those requests, so the next one
 * runs it again. A credential is kept until its expirationTimestamp; one
 * without is asked for again by the next request (client-go would keep it
 * until a 401, which our requests do not report back).
 */
import { spawn } from 'node:child_process';
import type https from 'node:https';
import { dirname, isAbsolute, join } from 'node:path';
import type { Credentials } from './credentials.js';

/** How long a plugin may take to answer before it is killed. */
export const EXEC_TIMEOUT_MS = 30_000;
/** Most plugin output read: an ExecCredential is a token or a certificate and key. */
const MAX_OUTPUT = 1 << 20;

export interface ExecPlugin {
  readonly command: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly apiVersion: string;
}

interface ExecCredential {
  readonly token?: string;
  readonly cert?: string;
  readonly key?: string;
  /** Wall-clock ms; undefined: use once. */
  readonly expiresMs?: number;
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The plugin of a kubeconfig's `user.exec`, or an error. A command with a path separator that is not absolute is
 * relative to the kubeconfig's directory (client-go's rule); a bare name is looked up on PATH.
 */
export function readExecPlugin(exec: unknown, kubeconfigPath: string): ExecPlugin | string {
  if (!isObj(exec)) return 'user.exec is not a mapping';
  const command = exec['command'];
  if (typeof command !== 'string' || command === '') return 'user.exec has no command';
  const args = exec['args'] ?? [];
  if (!Array.isArray(args) || !args.every((a): a is string => typeof a === 'string')) return 'user.exec.args is not a list of strings';
  const env: Record<string, string> = {};
  for (const e of Array.isArray(exec['env']) ? (exec['env'] as unknown[]) : []) {
    if (isObj(e) && typeof e['name'] === 'string') env[e['name']] = typeof e['value'] === 'string' ? e['value'] : '';
  }
  const apiVersion = typeof exec['apiVersion'] === 'string' ? exec['apiVersion'] : 'client.authentication.k8s.io/v1';
  const resolved = !isAbsolute(command) && command.includes('/') ? join(dirname(kubeconfigPath), command) : command;
  return { command: resolved, args, env, apiVersion };
}

function parseCredential(stdout: string): ExecCredential {
  const doc: unknown = JSON.parse(stdout);
  const status = isObj(doc) ? doc['status'] : undefined;
  if (!isObj(status)) throw new Error('no status in its ExecCredential');
  const field = (k: string): string | undefined => (typeof status[k] === 'string' && status[k] !== '' ? status[k] : undefined);
  const token = field('token');
  const cert = field('clientCertificateData');
  const key = field('clientKeyData');
  if (token === undefined && (cert === undefined || key === undefined)) throw new Error('its ExecCredential has neither a token nor a certificate and key');
  const expiry = field('expirationTimestamp');
  const expiresMs = expiry === undefined ? undefined : Date.parse(expiry);
  return {
    ...(token !== undefined ? { token } : {}),
    ...(cert !== undefined && key !== undefined ? { cert, key } : {}),
    ...(expiresMs !== undefined && !Number.isNaN(expiresMs) ? { expiresMs } : {}),
  };
}

/** Runs the plugin once: its credential, or a rejection saying why not (killed at the deadline, failed, bad output). */
function runPlugin(p: ExecPlugin, timeoutMs: number): Promise<ExecCredential> {
  return new Promise((resolve, reject) => {
    const info = JSON.stringify({ apiVersion: p.apiVersion, kind: 'ExecCredential', spec: { interactive: false } });
    // A process group of its own, killed whole: a wrapper script killed alone would leave the real plugin running.
    const env = { ...process.env, ...p.env, KUBERNETES_EXEC_INFO: info };
    const child = spawn(p.command, [...p.args], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    let err = '';
    let done = false;
    const finish = (e: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      // Killed whatever the ending: a plugin past its deadline, or one that said too much, must not outlive its run,
      // nor anything it started that still holds its output (ESRCH: the group is gone already).
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      child.stdout.destroy();
      child.stderr.destroy();
      if (e !== null) return reject(e);
      try {
        resolve(parseCredential(out));
      } catch (pe) {
        reject(new Error(`exec plugin ${p.command}: ${pe instanceof Error ? pe.message : String(pe)}`));
      }
    };
    const timer = setTimeout(() => finish(new Error(`exec plugin ${p.command} gave no credential in ${timeoutMs} ms; killed`)), timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
      if (out.length > MAX_OUTPUT) finish(new Error(`exec plugin ${p.command}: output over ${MAX_OUTPUT} bytes`));
    });
    child.stderr.on('data', (d: string) => {
      if (err.length < 4096) err += d;
    });
    child.on('error', (e) => finish(new Error(`exec plugin ${p.command}: ${e.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) return finish(null);
      finish(new Error(`exec plugin ${p.command} failed (${signal ?? `exit ${code}`}): ${err.trim().slice(0, 512)}`));
    });
  });
}

/** TLS from the kubeconfig (`tls`), the token or client certificate from the plugin, one run at a time. */
export class ExecCredentials implements Credentials {
  readonly #tls: Credentials;
  readonly #plugin: ExecPlugin;
  readonly #timeoutMs: number;
  #cached: ExecCredential | null = null;
  #running: Promise<ExecCredential> | null = null;

  constructor(tls: Credentials, plugin: ExecPlugin, timeoutMs = EXEC_TIMEOUT_MS) {
    this.#tls = tls;
    this.#plugin = plugin;
    this.#timeoutMs = timeoutMs;
  }

  async apply(opts: https.RequestOptions): Promise<void> {
    await this.#tls.apply(opts);
    const c = await this.#credential();
    if (c.cert !== undefined && c.key !== undefined) {
      opts.cert = c.cert;
      opts.key = c.key;
    }
    if (c.token !== undefined) opts.headers = { ...opts.headers, authorization: `Bearer ${c.token}` };
  }

  #credential(): Promise<ExecCredential> {
    const c = this.#cached;
    if (c?.expiresMs !== undefined && c.expiresMs > Date.now()) return Promise.resolve(c);
    if (this.#running === null) {
      const run = runPlugin(this.#plugin, this.#timeoutMs);
      this.#running = run;
      const settled = (): void => {
        if (this.#running === run) this.#running = null;
      };
      run.then((v) => {
        this.#cached = v;
        settled();
      }, settled);
    }
    return this.#running;
  }
}
