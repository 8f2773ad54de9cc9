/** After a fuzz run: one question per transport, the answer reduced to a word (an address, a count, or what went wrong). */
import dgram from 'node:dgram';
import net from 'node:net';
import * as dnsPacket from 'dns-packet';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import type { FuzzTarget } from '../testkit/fuzz-drive.js';

function query(name: string, id: number): Buffer {
  return dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
}

function word(b: Buffer | null, id: number): string {
  if (b === null) return 'no answer';
  try {
    const p = dnsPacket.decode(b);
    if (p.id !== id) return 'wrong id';
    const data = (p.answers ?? []).map((a) => String((a as { data?: unknown }).data));
    return data.length === 1 ? data[0]! : `${data.length} records`;
  } catch {
    return 'undecodable';
  }
}

export function udpQuery(t: FuzzTarget, name: string): Promise<string> {
  const id = 4242;
  return new Promise((resolve) => {
    const s = dgram.createSocket(net.isIPv6(t.host) ? 'udp6' : 'udp4');
    const timer = setTimeout(() => done(null), 3000);
    const done = (b: Buffer | null): void => {
      clearTimeout(timer);
      s.close();
      resolve(word(b, id));
    };
    s.on('message', (m) => done(m));
    s.send(query(name, id), t.port, t.host);
  });
}

export function tcpQuery(t: FuzzTarget, name: string): Promise<string> {
  const id = 4343;
  return new Promise((resolve) => {
    const s = net.connect(t.port, t.host);
    const timer = setTimeout(() => done(null), 3000);
    let settled = false;
    const done = (b: Buffer | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve(word(b, id));
    };
    const dec = new FrameDecoder((f) => done(Buffer.from(f)));
    s.on('data', (c) => dec.push(c));
    s.on('error', () => done(null));
    s.on('connect', () => s.write(frame(query(name, id))));
  });
}
