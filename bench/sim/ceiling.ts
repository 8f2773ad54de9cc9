/**
 * The `ceiling` target: the least a cache on Node's `dgram` can do per hit.
 * A hit is a Map lookup on the question's raw bytes, a copy of the stored
 * answer and its id patched: no parsing past the question, no TTL aging, no
 * limits, no counters. Whatever the agent spends beyond this is its own
 * work; what both spend is libuv's recvmsg/sendmsg per datagram.
 *
 * A miss (the first time a question is seen) goes to the simulator, like
 * the agent's: names under --cluster-domain and the reverse zones to
 * --cluster over one pipelined TCP connection (as the agent asks kube-dns),
 * the rest to --external over one UDP socket; the answer
 * (NOERROR or NXDOMAIN, not truncated) is kept forever. So answers are the
 * simulator's and the harness checks them like any target's, but this is a
 * ceiling, not a cache: nothing expires, nothing is evicted. On the miss
 * workload every name is new, so it is the least a Node process pays to
 * relay a query: what the agent adds beyond it is its own work.
 *
 *   node dist/bench/sim/ceiling.js --host 127.0.0.1 --port N --cluster-host 127.0.0.1 --cluster-port P \
 *     --external-host 127.0.0.1 --external-port Q [--cluster-domain cluster.local]
 *
 * Stops on SIGTERM/SIGINT.
 */
import dgram from 'node:dgram';
import net from 'node:net';

interface Endpoint {
  readonly host: string;
  readonly port: number;
}

interface Pending {
  readonly key: string;
  readonly id: number;
  readonly port: number;
  readonly address: string;
}

const BUFFER_BYTES = 4 * 1024 * 1024;
const RCODE_NOERROR = 0;
const RCODE_NXDOMAIN = 3;
const FLAG_TC = 0x02;

function arg(name: string, def?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : def;
  if (v === undefined) throw new Error(`--${name} is required`);
  return v;
}

function endpoint(prefix: string): Endpoint {
  const host = arg(`${prefix}-host`);
  const port = Number(arg(`${prefix}-port`));
  if (net.isIP(host) === 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`--${prefix}-host/--${prefix}-port: expected an IP address and a port`);
  return { host, port };
}

/** Offset just past the question (name, type, class), or -1 if there is none. */
function questionEnd(msg: Buffer): number {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return -1;
  let off = 12;
  for (;;) {
    const len = msg[off];
    if (len === undefined || len > 63) return -1;
    off += 1 + len;
    if (len === 0) break;
  }
  return off + 4 <= msg.length ? off + 4 : -1;
}

/** Lower-case ASCII name of the question, for routing a miss. */
function qname(msg: Buffer): string {
  const labels: string[] = [];
  let off = 12;
  for (let len = msg[off]!; len > 0; len = msg[off]!) {
    labels.push(msg.toString('latin1', off + 1, off + 1 + len));
    off += 1 + len;
  }
  return labels.join('.').toLowerCase();
}

async function main(): Promise<void> {
  const host = arg('host', '127.0.0.1');
  const port = Number(arg('port'));
  const cluster = endpoint('cluster');
  const external = endpoint('external');
  const domain = arg('cluster-domain', 'cluster.local').toLowerCase().replace(/\.$/, '');
  const family = net.isIPv6(host) ? 'udp6' : 'udp4';

  const cache = new Map<string, Buffer>();
  const pending = new Map<number, Pending>();
  let nextId = 0;

  const sock = dgram.createSocket({ type: family, recvBufferSize: BUFFER_BYTES, sendBufferSize: BUFFER_BYTES });
  const up = dgram.createSocket({ type: net.isIPv6(cluster.host) ? 'udp6' : 'udp4', recvBufferSize: BUFFER_BYTES, sendBufferSize: BUFFER_BYTES });

  sock.on('message', (msg, rinfo) => {
    const end = questionEnd(msg);
    if (end < 0) return;
    const key = msg.toString('latin1', 12, end);
    const hit = cache.get(key);
    if (hit !== undefined) {
      // A copy per answer: a send that libuv queues still holds its buffer.
      const out = Buffer.allocUnsafe(hit.length);
      hit.copy(out);
      out[0] = msg[0]!;
      out[1] = msg[1]!;
      sock.send(out, rinfo.port, rinfo.address);
      return;
    }
    nextId = (nextId + 1) & 0xffff;
    pending.set(nextId, { key, id: msg.readUInt16BE(0), port: rinfo.port, address: rinfo.address });
    const name = qname(msg);
    const inCluster = name === domain || name.endsWith(`.${domain}`) || name.endsWith('.in-addr.arpa') || name.endsWith('.ip6.arpa');
    const q = Buffer.from(msg);
    q.writeUInt16BE(nextId, 0);
    if (inCluster) toCluster(q);
    else up.send(q, external.port, external.host);
  });

  /** Cluster misses: one pipelined TCP connection, made again if it closes; frames written as they come. */
  let tcp: net.Socket | null = null;
  let held: Buffer = Buffer.alloc(0);
  const toCluster = (q: Buffer): void => {
    if (tcp === null || tcp.destroyed) {
      held = Buffer.alloc(0);
      const c = net.connect({ host: cluster.host, port: cluster.port, noDelay: true });
      c.on('data', (d: Buffer) => {
        held = held.length === 0 ? d : Buffer.concat([held, d]);
        while (held.length >= 2 && held.length >= 2 + held.readUInt16BE(0)) {
          const n = held.readUInt16BE(0);
          answered(Buffer.from(held.subarray(2, 2 + n)));
          held = held.subarray(2 + n);
        }
      });
      c.on('error', () => c.destroy());
      tcp = c;
    }
    const f = Buffer.allocUnsafe(q.length + 2);
    f.writeUInt16BE(q.length, 0);
    q.copy(f, 2);
    tcp.write(f);
  };

  const answered = (ans: Buffer): void => {
    if (ans.length < 12) return;
    const id = ans.readUInt16BE(0);
    const p = pending.get(id);
    if (p === undefined) return;
    pending.delete(id);
    const rcode = ans[3]! & 0x0f;
    if ((rcode === RCODE_NOERROR || rcode === RCODE_NXDOMAIN) && (ans[2]! & FLAG_TC) === 0) cache.set(p.key, Buffer.from(ans));
    ans.writeUInt16BE(p.id, 0);
    sock.send(ans, p.port, p.address);
  };
  up.on('message', answered);

  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(port, host, () => resolve());
  });
  await new Promise<void>((resolve) => up.bind(0, () => resolve()));
  process.stdout.write(`ceiling listening on ${host}:${sock.address().port}\n`);
  const stop = (): void => {
    tcp?.destroy();
    sock.close();
    up.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`ceiling: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
