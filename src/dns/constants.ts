/** Wire-format constants (RFC 1035, 2308, 6891). Plain numbers: they index typed arrays and compare fast. */

export const HEADER_LEN = 12;
/** Largest DNS message (TCP length prefix is 16 bits). */
export const MAX_MESSAGE = 65535;
/** Without EDNS0 a UDP answer may not exceed this (RFC 1035 4.2.1). */
export const CLASSIC_UDP_LIMIT = 512;

// Header byte offsets.
export const OFF_ID = 0;
export const OFF_FLAGS = 2;
export const OFF_QDCOUNT = 4;
export const OFF_ANCOUNT = 6;
export const OFF_NSCOUNT = 8;
export const OFF_ARCOUNT = 10;

// Flag bits within the 16-bit flags word.
export const FLAG_QR = 0x8000;
export const FLAG_AA = 0x0400;
export const FLAG_TC = 0x0200;
export const FLAG_RD = 0x0100;
export const FLAG_RA = 0x0080;
export const FLAG_AD = 0x0020;
export const FLAG_CD = 0x0010;
export const OPCODE_MASK = 0x7800;
export const RCODE_MASK = 0x000f;

export const Opcode = { QUERY: 0 } as const;

export const Rcode = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  /** Not authorized: the answer to a TSIG-signed query whose key we do not hold (RFC 8945 5.2). */
  NOTAUTH: 9,
} as const;
export type Rcode = (typeof Rcode)[keyof typeof Rcode];

export const QType = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  /** Transaction signature (RFC 8945): a meta-record, last in the additional section. */
  TSIG: 250,
  IXFR: 251,
  AXFR: 252,
  ANY: 255,
} as const;

export const QClass = { IN: 1, CH: 3, ANY: 255 } as const;

/** DO bit in the OPT record's TTL field (RFC 3225). */
export const EDNS_DO = 0x8000;

/** Name compression pointer marker (top two bits of a length byte). */
export const POINTER_MASK = 0xc0;
export const MAX_NAME_WIRE = 255;
export const MAX_LABEL = 63;
