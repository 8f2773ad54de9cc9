// Hits at a fixed rate from one socket: per-query RTT percentiles.
import dgram from 'node:dgram';
const [port, rate, secs] = process.argv.slice(2).map(Number);
const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 }); // a burst of answers (one sendmmsg) must not overflow the probe's own socket
const sent = new Map(); const rtts = []; let id = 0;
const q = (name, qid) => { const labels = name.split('.'); const parts = [Buffer.from([qid >> 8, qid & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])]; for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l)); parts.push(Buffer.from([0, 0, 1, 0, 1])); return Buffer.concat(parts); };
s.on('message', (m) => { const i = m.readUInt16BE(0); const t0 = sent.get(i); if (t0 !== undefined) { rtts.push(Number(process.hrtime.bigint() - t0) / 1000); sent.delete(i); } });
s.bind(0, '127.0.0.1', async () => {
  const total = rate * secs; const start = process.hrtime.bigint(); let n = 0;
  const tick = () => {
    const due = Math.min(total, Math.floor(Number(process.hrtime.bigint() - start) / 1e9 * rate));
    while (n < due) { id = (id + 1) & 0xffff; sent.set(id, process.hrtime.bigint()); s.send(q(`h${n % 100}.example`, id), port, '127.0.0.1'); n++; }
    if (n < total) setImmediate(tick); else setTimeout(() => { rtts.sort((a, b) => a - b); const p = (x) => rtts[Math.min(rtts.length - 1, Math.floor(rtts.length * x))]?.toFixed(0); console.log(JSON.stringify({ sent: total, answered: rtts.length, p50us: p(0.5), p99us: p(0.99), p999us: p(0.999) })); s.close(); }, 1000);
  };
  tick();
});
