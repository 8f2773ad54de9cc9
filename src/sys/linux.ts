/**
 * The Linux ABI numbers our koffi bindings share (socket(7), ip(7), ipv6(7),
 * errno(3)), in one place. They are the same on every architecture Node runs
 * on (asm-generic); the bindings that need layouts beyond these (mmsghdr,
 * rtnetlink) keep them beside the code that reads them.
 */
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const EINTR = 4;
export const EAGAIN = 11;
