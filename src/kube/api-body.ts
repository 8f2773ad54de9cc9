/**
 * Reading and decoding the API server's response bodies for the reflector
 * (list-watch.ts): a whole body with a size cap, a JSON object or null, and
 * the message of a Status for logs. Errors are values (null), never thrown:
 * a broken response is a failure the loop backs off from.
 */
import type { Readable } from 'node:stream';

export type Json = Readonly<Record<string, unknown>>;

export function asObject(v: unknown): Json | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : null;
}

/** Longest Status message kept for a log line: an RBAC 403's is about 200 characters; a broken server's may be a page. */
const MAX_MESSAGE_CHARS = 1000;

/** A Status's message (a body's, or a watch ERROR event's object), cut to a log line's length; null when it has none. */
export function messageOf(status: unknown): string | null {
  const m = asObject(status)?.['message'];
  return typeof m === 'string' ? m.slice(0, MAX_MESSAGE_CHARS) : null;
}

/** The message of a Status body, for logs (kube-apiserver explains 403s there: missing RBAC). */
export function statusMessage(text: string): string {
  try {
    const m = messageOf(JSON.parse(text));
    if (m !== null) return m;
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.slice(0, 200);
}

/** Reads a whole body; null when it breaks off or exceeds `max` bytes. */
export function readBody(body: Readable, max: number): Promise<string | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        body.destroy();
        resolve(null);
        return;
      }
      chunks.push(c);
    });
    body.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    body.on('error', () => resolve(null));
    body.on('close', () => resolve(null));
  });
}
