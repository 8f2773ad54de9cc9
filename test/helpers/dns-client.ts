// A minimal DNS client for tests: one UDP exchange, or many queries pipelined
// on one TCP connection. Bounded by a timeout; only ever aimed at loopback.
import dgram from 'node:dgram';
import net from 'node:net';
import * as dnsPacket from 'dns-packet';
import { FrameDecoder, frame } from '../../src/dns/framing.js';

export interface Target {
  host: string;
  port: number;
}

export function buildQuery(name: string, opts: { type?: string; id?: number; edns?: boolean; udpSize?: number } = {}): Buffer {
  const p: dnsPacket.Packet = {
    type: 'query',
    id: opts.id ?? Math.floor(Math.random() * 65536),
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type: (opts.type ?? 'A') as 'A', class: 'IN' }],
  };
  if (opts.edns) p.additionals = [{ type: 'OPT', name: '.', udpPayloadSize: opts.udpSize ?? 1232, flags: 0, options: [] } as unknown as dnsPacket.Answer];
  return dnsPacket.encode(p);
}

/** Sends raw bytes over UDP; resolves with the first datagram back, or null on timeout. */
export function udpExchange(target: Target, msg: Buffer, timeoutMs = 2000): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const s = dgram.createSocket(net.isIPv6(target.host) ? 'udp6' : 'udp4');
    const timer = setTimeout(() => finish(null), timeoutMs);
    const finish = (b: Buffer | null): void => {
      clearTimeout(timer);
      s.close();
      resolve(b);
    };
    s.on('message', (m) => finish(m));
    s.on('error', () => finish(null));
    s.send(msg, target.port, target.host);
  });
}

export async function udpQuery(target: Target, name: string, opts: { type?: string; id?: number; edns?: boolean; udpSize?: number; timeoutMs?: number } = {}): Promise<dnsPacket.DecodedPacket> {
  const b = await udpExchange(target, buildQuery(name, opts), opts.timeoutMs);
  if (b === null) throw new Error(`no UDP answer for ${name}`);
  return dnsPacket.decode(b);
}

/** Pipelines all queries on one connection; answers come back in any order, matched by id. */
export function tcpQueries(target: Target, msgs: Buffer[], timeoutMs = 3000): Promise<Map<number, Buffer>> {
  return new Promise((resolve, reject) => {
    const answers = new Map<number, Buffer>();
    const sock = net.connect(target.port, target.host);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`TCP: ${answers.size}/${msgs.length} answers before timeout`));
    }, timeoutMs);
    const dec = new FrameDecoder((f) => {
      answers.set(f.readUInt16BE(0), Buffer.from(f));
      if (answers.size === msgs.length) {
        clearTimeout(timer);
        sock.end();
        resolve(answers);
      }
    });
    sock.on('data', (c) => dec.push(c));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('connect', () => sock.write(Buffer.concat(msgs.map((m) => frame(m)))));
  });
}

export async function tcpQuery(target: Target, name: string, opts: { type?: string; id?: number } = {}): Promise<dnsPacket.DecodedPacket> {
  const id = opts.id ?? 77;
  const answers = await tcpQueries(target, [buildQuery(name, { ...opts, id })]);
  return dnsPacket.decode(answers.get(id)!);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
