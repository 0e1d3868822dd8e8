/*
 * A UDP echo server for case 12's web image (busybox-static has no UDP server: its nc has no -u).
 * Built by the case with `cc -static -Os`: no libraries in the image. `udp-echo PORT` binds
 * 0.0.0.0:PORT, answers every datagram with "udp-echo: " + the datagram, and logs who sent it
 * (the forward is DNAT, so the service sees the real client address).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: udp-echo PORT\n");
    return 2;
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    perror("udp-echo: socket");
    return 1;
  }
  struct sockaddr_in self = {0};
  self.sin_family = AF_INET;
  self.sin_port = htons((unsigned short)atoi(argv[1]));
  self.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(fd, (struct sockaddr *)&self, sizeof self) != 0) {
    perror("udp-echo: bind");
    return 1;
  }
  printf("udp-echo: listening on udp port %s\n", argv[1]);
  fflush(stdout);
  static const char prefix[] = "udp-echo: ";
  char in[1500], out[sizeof prefix + sizeof in];
  for (;;) {
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    ssize_t n = recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&peer, &len);
    if (n < 0) {
      perror("udp-echo: recvfrom");
      continue;
    }
    memcpy(out, prefix, sizeof prefix - 1);
    memcpy(out + sizeof prefix - 1, in, (size_t)n);
    sendto(fd, out, sizeof prefix - 1 + (size_t)n, 0, (struct sockaddr *)&peer, len);
    printf("udp-echo: %zd bytes from %s:%u\n", n, inet_ntoa(peer.sin_addr), ntohs(peer.sin_port));
    fflush(stdout);
  }
}
