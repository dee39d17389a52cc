// Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE).
#ifndef C_TURNOUT_SYS_H
#define C_TURNOUT_SYS_H

#include <sys/socket.h>

/// accept4(2): accepts and sets SOCK_NONBLOCK / SOCK_CLOEXEC (`flags`) in one system call.
int turnout_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

#endif
