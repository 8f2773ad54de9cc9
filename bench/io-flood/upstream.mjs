// Answers A 192.0.2.1 TTL 300 for names starting with "h", NXDOMAIN (no SOA: uncacheable) for the rest.
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4');
s.on('message', (m, r) => {
  let i = 12; while (m[i] !== 0) i += m[i] + 1; const qend = i + 5;
  const hit = m[13] === 0x68; // first label starts with 'h'
  const out = Buffer.alloc(qend + (hit ? 16 : 0));
  m.copy(out, 0, 0, qend);
  out[2] = 0x81; out[3] = hit ? 0x80 : 0x83; out.writeUInt16BE(1, 4); out.writeUInt16BE(hit ? 1 : 0, 6); out.writeUInt16BE(0, 8); out.writeUInt16BE(0, 10);
  if (hit) { out.writeUInt16BE(0xc00c, qend); out.writeUInt16BE(1, qend + 2); out.writeUInt16BE(1, qend + 4); out.writeUInt32BE(300, qend + 6); out.writeUInt16BE(4, qend + 10); out.set([192, 0, 2, 1], qend + 12); }
  s.send(out, r.port, r.address);
});
s.bind(Number(process.argv[2]), '127.0.0.1');
