// Names and answers shared by test/store-shared.test.ts and its reader thread:
// key i's records say which key they belong to.
import { query } from '../kit/dns.js';

export function readerQuery(i: number): Buffer {
  return query({ name: `k${i}.example`, id: i & 0xffff });
}

/** The address of key i's record r: every record names its key. */
export function expectedData(i: number, r: number): string {
  return `10.${(i >> 8) & 255}.${i & 255}.${r & 255}`;
}
