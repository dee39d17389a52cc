// Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE).
#ifndef C_TURNOUT_SYS_H
#define C_TURNOUT_SYS_H

#include <stdint.h>
#include <sys/socket.h>

/// accept4(2): accepts and sets SOCK_NONBLOCK / SOCK_CLOEXEC (`flags`) in one system call.
int turnout_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

/// epoll_create1(EPOLL_CLOEXEC).
int turnout_epoll_create(void);

/// Adds `fd` to the set, edge-triggered, for input, output, peer half-close and errors; the events
/// come back with `token`.
int turnout_epoll_add(int epfd, int fd, uint64_t token);

/// Adds a listening socket, edge-triggered, for input.
int turnout_epoll_add_listener(int epfd, int fd, uint64_t token);

/// Takes `fd` out of the set.
int turnout_epoll_remove(int epfd, int fd);

/// epoll_wait for at most `timeout_ms` (0: without blocking), EINTR retried. Fills `tokens` and
/// `events` (struct epoll_event is packed on x86-64, so it is unpacked here); returns the count,
/// or -1 with errno set.
int turnout_epoll_poll(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms);

/// The event bits, for Swift.
extern const uint32_t turnout_epoll_in, turnout_epoll_out, turnout_epoll_err, turnout_epoll_hup,
    turnout_epoll_rdhup;

#endif
