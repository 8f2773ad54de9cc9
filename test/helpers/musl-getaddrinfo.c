/*
 * getaddrinfo(argv[1]) and one address per line, for test/e2e-netns.test.ts.
 * Built there with `musl-gcc -static`, so the lookup goes through musl's own
 * stub resolver (Alpine's): before 1.2.4 it never retries a truncated UDP
 * answer over TCP and uses whatever records the TC=1 answer carries.
 * Exit 0 with addresses, 2 with the getaddrinfo error on stderr.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s NAME\n", argv[0]);
    return 64;
  }
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM; /* one entry per address, not one per socket type */
  struct addrinfo *res = NULL;
  int rc = getaddrinfo(argv[1], NULL, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "getaddrinfo %s: %s (%d)\n", argv[1], gai_strerror(rc), rc);
    return 2;
  }
  char buf[INET6_ADDRSTRLEN];
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    const void *addr = ai->ai_family == AF_INET
      ? (const void *)&((const struct sockaddr_in *)ai->ai_addr)->sin_addr
      : (const void *)&((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    if (inet_ntop(ai->ai_family, addr, buf, sizeof buf) != NULL) printf("%s\n", buf);
  }
  freeaddrinfo(res);
  return 0;
}
