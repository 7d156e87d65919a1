/* rendezvous.c - lt_comm_rendezvous_broadcast: a small TCP exchange that hands rank 0's
 * bytes (NCCL's unique id) to every other rank when nothing but torchrun-style variables
 * (MASTER_ADDR, MASTER_PORT) connects the processes of a job.
 *
 * Rank 0 listens on addr:port; every other rank connects, says who it is, and receives the
 * bytes. The exchange, in 32-bit big-endian words:
 *
 *     peer -> rank 0   hello  (4 words): MAGIC, rank, world, len
 *     rank 0 -> peer   answer (4 words): MAGIC, verdict, rank 0's world, rank 0's len
 *     rank 0 -> peer   len bytes, only when the verdict is VERDICT_OK
 *
 * Rank 0 sends the bytes once every rank 1..world-1 has said hello, so a rank that returns
 * LT_OK knows the whole job reached rank 0. A hello naming another world size or length,
 * or a rank already heard from, fails rank 0 with a message naming that rank (the rank is
 * told why before its connection is closed); a connection that does not open with MAGIC is
 * something else knocking on the port and is dropped.
 *
 * One deadline bounds the whole call: sockets are non-blocking and every wait is a poll
 * on the time left. Peers retry refused connections with short sleeps until then, since
 * rank 0 may not be listening yet. Nothing here exits, and every descriptor is closed on
 * every path. Name resolution (getaddrinfo) is the one step the deadline cannot cut
 * short: a resolver that hangs takes its own time. */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "lt_comm.h"

enum {
    MAGIC = 0x4c545256, /* "LTRV" */
    WORDS = 4,          /* hello and answer are 4 words each */
    VERDICT_OK = 0,
    VERDICT_WORLD = 1, /* the hello's world size differs from rank 0's */
    VERDICT_LEN = 2,   /* its length differs */
    VERDICT_TWICE = 3, /* another connection already said this rank */
    VERDICT_RANK = 4,  /* the rank is 0 or outside 0..world-1 */
    /* connections rank 0 reads hellos from at once beyond the world-1 it expects: room for
       strangers on the port and for peers that reconnect */
    SPARE_SLOTS = 16
};

/* Between a peer's connection attempts while rank 0 is not listening yet. */
static const double RETRY_SLEEP_S = 0.1;

/* ---- time ----------------------------------------------------------------------------- */

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Milliseconds left until `deadline` for poll, rounded up so a wait never ends early and
   spins; 0 once it has passed. */
static int ms_left(double deadline) {
    double left = deadline - mono_now();
    if (left <= 0) return 0;
    if (left > 3600.0) return 3600 * 1000;
    return (int)(left * 1000.0) + 1;
}

static void sleep_until(double until) {
    double left = until - mono_now();
    if (left <= 0) return;
    struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- descriptors ---------------------------------------------------------------------- */

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd); /* Linux frees the descriptor even when close reports EINTR */
    *fd = -1;
}

/* Wait until fd is ready for `events` or the deadline passes: 1 ready, 0 timed out, -1 an
   error (errno set). POLLERR/POLLHUP count as ready: the read or write that follows says
   what happened. */
static int wait_fd(int fd, short events, double deadline) {
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, ms_left(deadline));
        if (n > 0) return 1;
        if (n == 0) {
            if (mono_now() >= deadline) return 0;
            continue;
        }
        if (errno != EINTR) return -1;
    }
}

/* Send all `len` bytes before the deadline: LT_OK, or -1 timed out, or an errno. MSG_NOSIGNAL:
   a peer that went away is an EPIPE here, not a SIGPIPE that ends the process. */
static int send_all(int fd, const void *buf, size_t len, double deadline) {
    const char *p = (const char *)buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w == 0) return -1;
            if (w < 0) return errno;
            continue;
        }
        return n < 0 ? errno : EPIPE;
    }
    return LT_OK;
}

/* Receive exactly `len` bytes before the deadline into buf; *got counts what arrived.
   LT_OK, RECV_TIMEOUT, RECV_CLOSED (the other side closed the connection first), or an
   errno (ECONNRESET, ...). */
enum { RECV_TIMEOUT = -1, RECV_CLOSED = -2 };
static int recv_all(int fd, void *buf, size_t len, size_t *got, double deadline) {
    char *p = (char *)buf;
    *got = 0;
    while (*got < len) {
        ssize_t n = recv(fd, p + *got, len - *got, 0);
        if (n > 0) {
            *got += (size_t)n;
            continue;
        }
        if (n == 0) return RECV_CLOSED;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w == 0) return RECV_TIMEOUT;
            if (w < 0) return errno;
            continue;
        }
        return errno;
    }
    return LT_OK;
}

static void put_words(unsigned char *out, const uint32_t *w, int n) {
    for (int i = 0; i < n; i++) {
        out[4 * i + 0] = (unsigned char)(w[i] >> 24);
        out[4 * i + 1] = (unsigned char)(w[i] >> 16);
        out[4 * i + 2] = (unsigned char)(w[i] >> 8);
        out[4 * i + 3] = (unsigned char)w[i];
    }
}

static void get_words(uint32_t *w, const unsigned char *in, int n) {
    for (int i = 0; i < n; i++)
        w[i] = (uint32_t)in[4 * i] << 24 | (uint32_t)in[4 * i + 1] << 16 |
               (uint32_t)in[4 * i + 2] << 8 | (uint32_t)in[4 * i + 3];
}

/* ---- addresses ------------------------------------------------------------------------ */

/* "host:port", with an IPv6 literal in brackets, for messages. */
static void format_endpoint(char *out, size_t n, const char *addr, int32_t port) {
    if (strchr(addr, ':'))
        snprintf(out, n, "[%s]:%d", addr, (int)port);
    else
        snprintf(out, n, "%s:%d", addr, (int)port);
}

/* The numeric address a connection came from, for messages naming a misbehaving peer. */
static void format_sockaddr(char *out, size_t n, const struct sockaddr *sa, socklen_t len) {
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, n, "an unknown address");
    else if (strchr(host, ':'))
        snprintf(out, n, "[%s]:%s", host, serv);
    else
        snprintf(out, n, "%s:%s", host, serv);
}

static int resolve(const char *addr, int32_t port, int passive, struct addrinfo **out) {
    char serv[16];
    snprintf(serv, sizeof serv, "%d", (int)port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    int rc;
    do {
        rc = getaddrinfo(addr, serv, &hints, out);
    } while (rc == EAI_SYSTEM && errno == EINTR);
    return rc;
}

static const char *gai_reason(int rc) {
    return rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);
}

/* ---- rank 0 --------------------------------------------------------------------------- */

/* One accepted connection while rank 0 gathers hellos. */
typedef struct conn {
    int fd;
    int32_t rank;                       /* -1 until its hello is read and accepted */
    size_t got;                         /* hello bytes read so far */
    unsigned char hello[WORDS * 4];     /* MAGIC, rank, world, len */
    char from[NI_MAXHOST + NI_MAXSERV + 4]; /* its address, for messages */
} conn;

static int listen_on(const char *addr, int32_t port, const char *where, int *out) {
    *out = -1;
    struct addrinfo *list = NULL;
    int rc = resolve(addr, port, 1, &list);
    if (rc != 0)
        return lt_fail(LT_ERR_IO, "rendezvous: rank 0 cannot resolve %s to listen on: %s",
                       where, gai_reason(rc));
    int err = 0;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        /* a port left in TIME_WAIT by the previous run on it is reusable at once */
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
            freeaddrinfo(list);
            *out = fd;
            return LT_OK;
        }
        err = errno;
        close_fd(&fd);
    }
    freeaddrinfo(list);
    if (!err) err = EADDRNOTAVAIL;
    return lt_fail(LT_ERR_IO, "rendezvous: rank 0 cannot listen on %s: %s%s", where,
                   strerror(err),
                   err == EADDRINUSE      ? " (another program or an earlier job holds the port)"
                   : err == EADDRNOTAVAIL ? " (it is not an address of this machine)"
                                          : "");
}

/* Tell a refused peer why (best effort: a 16-byte answer fits any fresh socket buffer, so
   one non-blocking send either goes or the peer is gone). */
static void send_verdict(int fd, uint32_t verdict, int32_t world, int32_t len) {
    uint32_t w[WORDS] = {MAGIC, verdict, (uint32_t)world, (uint32_t)len};
    unsigned char b[WORDS * 4];
    put_words(b, w, WORDS);
    ssize_t n;
    do {
        n = send(fd, b, sizeof b, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
}

/* A complete hello from c: LT_OK and c->rank set, the failure naming the peer (the caller
   ends the rendezvous), or HELLO_STRANGER when the connection is not one of ours and is
   dropped. */
enum { HELLO_STRANGER = -1 };
static int check_hello(conn *c, const conn *conns, int nconns, int32_t world, int32_t len,
                       const char *where) {
    uint32_t w[WORDS];
    get_words(w, c->hello, WORDS);
    if (w[0] != MAGIC) return HELLO_STRANGER;
    int32_t r = (int32_t)w[1], pw = (int32_t)w[2], plen = (int32_t)w[3];
    if (r <= 0 || r >= world) {
        send_verdict(c->fd, VERDICT_RANK, world, len);
        return lt_fail(LT_ERR_ARG,
                       "rendezvous: a peer at %s says it is rank %d, but rank 0 at %s has "
                       "a world of %d (ranks 1..%d connect)",
                       c->from, (int)r, where, (int)world, (int)world - 1);
    }
    if (pw != world) {
        send_verdict(c->fd, VERDICT_WORLD, world, len);
        return lt_fail(LT_ERR_ARG,
                       "rendezvous: rank %d (from %s) says the world has %d ranks, but rank 0 "
                       "at %s has %d",
                       (int)r, c->from, (int)pw, where, (int)world);
    }
    if (plen != len) {
        send_verdict(c->fd, VERDICT_LEN, world, len);
        return lt_fail(LT_ERR_ARG,
                       "rendezvous: rank %d (from %s) expects %d bytes, but rank 0 at %s "
                       "sends %d",
                       (int)r, c->from, (int)plen, where, (int)len);
    }
    for (int i = 0; i < nconns; i++) {
        if (&conns[i] != c && conns[i].rank == r) {
            send_verdict(c->fd, VERDICT_TWICE, world, len);
            return lt_fail(LT_ERR_ARG,
                           "rendezvous: rank %d connected twice to rank 0 at %s (from %s and "
                           "from %s): two processes were given the same rank",
                           (int)r, where, conns[i].from, c->from);
        }
    }
    c->rank = r;
    return LT_OK;
}

/* "ranks 2, 5" of the ranks not yet heard from, for the timeout message. */
static void missing_ranks(char *out, size_t n, const conn *conns, int nconns, int32_t world) {
    size_t used = 0;
    int shown = 0, missing = 0;
    out[0] = '\0';
    for (int32_t r = 1; r < world; r++) {
        int seen = 0;
        for (int i = 0; i < nconns && !seen; i++) seen = conns[i].rank == r;
        if (seen) continue;
        missing++;
        if (shown < 8 && used + 16 < n) {
            used += (size_t)snprintf(out + used, n - used, "%s%d", shown ? ", " : "", (int)r);
            shown++;
        }
    }
    if (missing > shown && used + 16 < n) snprintf(out + used, n - used, ", ...");
}

/* Accept and read hellos until ranks 1..world-1 have each said one, then send each the
   answer and the bytes. conns has world-1 + SPARE_SLOTS slots; the listener is polled only
   while one is free, so a crowd of strangers waits in the backlog rather than in memory. */
static int serve(int lfd, conn *conns, int nslots, int32_t world, const void *buf, int32_t len,
                 double deadline, double timeout_s, const char *where) {
    int nconns = 0, ready = 0;
    struct pollfd *pfds = (struct pollfd *)calloc((size_t)nslots + 1, sizeof *pfds);
    if (!pfds) return lt_fail(LT_ERR_NOMEM, "rendezvous: out of memory");
    int st = LT_OK;
    while (ready < world - 1) {
        /* pfds[0]: the listener (fd -1 while no slot is free); pfds[1 + i]: conns[i] */
        pfds[0].fd = nconns < nslots ? lfd : -1;
        pfds[0].events = POLLIN;
        for (int i = 0; i < nconns; i++) {
            pfds[1 + i].fd = conns[i].rank < 0 ? conns[i].fd : -1;
            pfds[1 + i].events = POLLIN;
            pfds[1 + i].revents = 0;
        }
        int n = poll(pfds, (nfds_t)nconns + 1, ms_left(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            st = lt_fail(LT_ERR_IO, "rendezvous: rank 0 at %s: poll: %s", where,
                         strerror(errno));
            break;
        }
        if (n == 0) {
            if (mono_now() < deadline) continue;
            char miss[160];
            missing_ranks(miss, sizeof miss, conns, nconns, world);
            st = lt_fail(LT_ERR_IO,
                         "rendezvous: rank 0 at %s heard from %d of the %d other ranks within "
                         "%g s (still waiting for rank%s %s)",
                         where, ready, (int)world - 1, timeout_s,
                         world - 1 - ready > 1 ? "s" : "", miss);
            break;
        }
        /* hellos first: a slot closed here is reused by the accept below */
        for (int i = 0; i < nconns && st == LT_OK; i++) {
            conn *c = &conns[i];
            if (c->rank >= 0 || !pfds[1 + i].revents) continue;
            ssize_t got = recv(c->fd, c->hello + c->got, sizeof c->hello - c->got, 0);
            if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            int drop = got <= 0; /* closed or reset before a whole hello: not one of ours */
            if (got > 0) {
                c->got += (size_t)got;
                if (c->got < sizeof c->hello) continue;
                int v = check_hello(c, conns, nconns, world, len, where);
                if (v == LT_OK) {
                    ready++;
                    continue;
                }
                if (v != HELLO_STRANGER) {
                    st = v;
                    break;
                }
                drop = 1;
            }
            if (drop) {
                close_fd(&c->fd);
                conns[i] = conns[nconns - 1];
                pfds[1 + i] = pfds[nconns]; /* its readiness moves with it */
                nconns--;
                i--;
            }
        }
        if (st != LT_OK) break;
        if (pfds[0].fd >= 0 && (pfds[0].revents & POLLIN) && nconns < nslots) {
            conn *c = &conns[nconns];
            struct sockaddr_storage sa;
            socklen_t salen = sizeof sa;
            int fd = accept4(lfd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                /* the connection went away between poll and accept, or the process is out
                   of descriptors for a moment: the deadline still bounds the wait */
                if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK ||
                    errno == ECONNABORTED || errno == EPROTO || errno == EMFILE ||
                    errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                    continue;
                st = lt_fail(LT_ERR_IO, "rendezvous: rank 0 at %s: accept: %s", where,
                             strerror(errno));
                break;
            }
            memset(c, 0, sizeof *c);
            c->fd = fd;
            c->rank = -1;
            format_sockaddr(c->from, sizeof c->from, (struct sockaddr *)&sa, salen);
            nconns++;
        }
    }
    free(pfds);
    if (st != LT_OK) return st;

    /* every rank is here: the answer and the bytes to each, in turn (small enough that the
       socket buffers take them whole; the deadline bounds a peer that stops reading) */
    uint32_t w[WORDS] = {MAGIC, VERDICT_OK, (uint32_t)world, (uint32_t)len};
    unsigned char head[WORDS * 4];
    put_words(head, w, WORDS);
    for (int i = 0; i < nconns; i++) {
        if (conns[i].rank < 0) continue; /* a stranger still talking: ignored */
        int e = send_all(conns[i].fd, head, sizeof head, deadline);
        if (e == LT_OK && len > 0) e = send_all(conns[i].fd, buf, (size_t)len, deadline);
        if (e == -1)
            return lt_fail(LT_ERR_IO,
                           "rendezvous: rank 0 at %s could not send %d bytes to rank %d (%s) "
                           "within %g s",
                           where, (int)len, (int)conns[i].rank, conns[i].from, timeout_s);
        if (e != LT_OK)
            return lt_fail(LT_ERR_IO, "rendezvous: rank 0 at %s, sending to rank %d (%s): %s",
                           where, (int)conns[i].rank, conns[i].from, strerror(e));
    }
    return LT_OK;
}

static int rank0(const char *addr, int32_t port, int32_t world, const void *buf, int32_t len,
                 double deadline, double timeout_s, const char *where) {
    int lfd = -1;
    LT_TRY(listen_on(addr, port, where, &lfd));
    int nslots = (int)world - 1 + SPARE_SLOTS;
    conn *conns = (conn *)calloc((size_t)nslots, sizeof *conns);
    if (!conns) {
        close_fd(&lfd);
        return lt_fail(LT_ERR_NOMEM, "rendezvous: out of memory for %d connections", nslots);
    }
    for (int i = 0; i < nslots; i++) conns[i].fd = -1;
    int st = serve(lfd, conns, nslots, world, buf, len, deadline, timeout_s, where);
    /* closing after the sends is safe: the kernel delivers queued bytes before the FIN */
    for (int i = 0; i < nslots; i++) close_fd(&conns[i].fd);
    free(conns);
    close_fd(&lfd);
    return st;
}

/* ---- ranks 1..world-1 ------------------------------------------------------------------- */

/* One connection attempt to `ai` before the deadline: LT_OK and *out, -1 timed out, or
   the errno that refused it. */
static int connect_once(const struct addrinfo *ai, double deadline, int *out) {
    *out = -1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) return errno;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno != EINPROGRESS && errno != EINTR) {
        int e = errno;
        close_fd(&fd);
        return e;
    }
    if (rc != 0) {
        /* in progress (or interrupted, which carries on the same way): writable once the
           handshake ends, SO_ERROR says how */
        int w = wait_fd(fd, POLLOUT, deadline);
        if (w <= 0) {
            int e = w == 0 ? -1 : errno;
            close_fd(&fd);
            return e;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
        if (soerr != 0) {
            close_fd(&fd);
            return soerr;
        }
    }
    *out = fd;
    return LT_OK;
}

/* Connect to rank 0, retrying refusals (it may not be listening yet) and failed name
   lookups (its host name may not be published yet) until the deadline. */
static int connect_rank0(const char *addr, int32_t port, int32_t rank, double deadline,
                         double timeout_s, const char *where, int *out) {
    char reason[160] = "no attempt finished";
    for (;;) {
        struct addrinfo *list = NULL;
        int rc = resolve(addr, port, 0, &list);
        if (rc != 0) {
            snprintf(reason, sizeof reason, "cannot resolve %s: %s", addr, gai_reason(rc));
        } else {
            for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
                int e = connect_once(ai, deadline, out);
                if (e == LT_OK) {
                    freeaddrinfo(list);
                    return LT_OK;
                }
                snprintf(reason, sizeof reason, "%s",
                         e == -1 ? "the connection did not open in time" : strerror(e));
                if (mono_now() >= deadline) break;
            }
            freeaddrinfo(list);
        }
        double now = mono_now();
        if (now >= deadline) break;
        sleep_until(now + RETRY_SLEEP_S < deadline ? now + RETRY_SLEEP_S : deadline);
    }
    /* strerror's "Connection refused" reads better lower-cased inside the sentence */
    if (reason[0] >= 'A' && reason[0] <= 'Z') reason[0] = (char)(reason[0] - 'A' + 'a');
    return lt_fail(LT_ERR_IO, "rendezvous: rank %d could not reach rank 0 at %s within %g s (%s)",
                   (int)rank, where, timeout_s, reason);
}

static const char *verdict_reason(uint32_t v) {
    switch (v) {
    case VERDICT_WORLD: return "its world size differs";
    case VERDICT_LEN: return "the length of the data differs";
    case VERDICT_TWICE: return "another process already connected as this rank";
    case VERDICT_RANK: return "the rank is outside 1..world-1";
    default: return "an unknown reason";
    }
}

static int peer(const char *addr, int32_t port, int32_t rank, int32_t world, void *buf,
                int32_t len, double deadline, double timeout_s, const char *where) {
    int fd = -1;
    LT_TRY(connect_rank0(addr, port, rank, deadline, timeout_s, where, &fd));
    uint32_t w[WORDS] = {MAGIC, (uint32_t)rank, (uint32_t)world, (uint32_t)len};
    unsigned char b[WORDS * 4];
    put_words(b, w, WORDS);
    int st = LT_OK;
    int e = send_all(fd, b, sizeof b, deadline);
    size_t got = 0;
    if (e == -1) {
        st = lt_fail(LT_ERR_IO,
                     "rendezvous: rank %d could not send its hello to rank 0 at %s within %g s",
                     (int)rank, where, timeout_s);
    } else if (e != LT_OK) {
        st = lt_fail(LT_ERR_IO, "rendezvous: rank %d, sending its hello to rank 0 at %s: %s",
                     (int)rank, where, strerror(e));
    } else if ((e = recv_all(fd, b, sizeof b, &got, deadline)) != LT_OK) {
        /* rank 0 answers only once every rank has said hello */
        if (e == RECV_TIMEOUT)
            st = lt_fail(LT_ERR_IO,
                         "rendezvous: rank %d reached rank 0 at %s but had no answer within "
                         "%g s (rank 0 waits for every rank; is one missing?)",
                         (int)rank, where, timeout_s);
        else if (e == RECV_CLOSED)
            st = lt_fail(LT_ERR_IO,
                         "rendezvous: rank %d: rank 0 at %s closed the connection without an "
                         "answer (it failed, or something else listens on that port)",
                         (int)rank, where);
        else
            st = lt_fail(LT_ERR_IO, "rendezvous: rank %d, waiting for rank 0 at %s: %s",
                         (int)rank, where, strerror(e));
    } else {
        get_words(w, b, WORDS);
        if (w[0] != MAGIC) {
            st = lt_fail(LT_ERR_IO,
                         "rendezvous: rank %d: what answers at %s is not a luatrain rank 0",
                         (int)rank, where);
        } else if (w[1] != VERDICT_OK) {
            st = lt_fail(LT_ERR_ARG,
                         "rendezvous: rank 0 at %s refused rank %d: %s (this rank has a world "
                         "of %d and expects %d bytes; rank 0 has %d and sends %d)",
                         where, (int)rank, verdict_reason(w[1]), (int)world, (int)len,
                         (int)(int32_t)w[2], (int)(int32_t)w[3]);
        } else if (len > 0 && (e = recv_all(fd, buf, (size_t)len, &got, deadline)) != LT_OK) {
            if (e == RECV_TIMEOUT)
                st = lt_fail(LT_ERR_IO,
                             "rendezvous: rank %d received %zu of %d bytes from rank 0 at %s "
                             "within %g s",
                             (int)rank, got, (int)len, where, timeout_s);
            else if (e == RECV_CLOSED)
                st = lt_fail(LT_ERR_IO,
                             "rendezvous: rank %d: rank 0 at %s closed the connection after "
                             "%zu of %d bytes",
                             (int)rank, where, got, (int)len);
            else
                st = lt_fail(LT_ERR_IO,
                             "rendezvous: rank %d, receiving from rank 0 at %s: %s", (int)rank,
                             where, strerror(e));
        }
    }
    close_fd(&fd);
    return st;
}

/* ---- the public function ---------------------------------------------------------------- */

int lt_comm_rendezvous_broadcast(const char *addr, int32_t port, int32_t rank, int32_t world,
                                 void *buf, int32_t len, double timeout_s) {
    if (!addr || !*addr) return lt_fail(LT_ERR_ARG, "rendezvous: no address for rank 0");
    if (port <= 0 || port > 65535)
        return lt_fail(LT_ERR_ARG, "rendezvous: port %d is outside 1..65535", (int)port);
    if (world < 1)
        return lt_fail(LT_ERR_ARG, "rendezvous: world size %d is below 1", (int)world);
    if (rank < 0 || rank >= world)
        return lt_fail(LT_ERR_ARG, "rendezvous: rank %d is outside 0..%d", (int)rank,
                       (int)world - 1);
    if (len < 0 || (len > 0 && !buf))
        return lt_fail(LT_ERR_ARG, "rendezvous: rank %d: %s", (int)rank,
                       len < 0 ? "negative length" : "buf is NULL");
    if (world == 1) return LT_OK; /* rank 0 alone already has its bytes */
    if (!(timeout_s > 0)) timeout_s = 600.0; /* as lt_comm_options: <= 0 is the default */
    double deadline = mono_now() + timeout_s;
    char where[300];
    format_endpoint(where, sizeof where, addr, port);
    if (rank == 0) return rank0(addr, port, world, buf, len, deadline, timeout_s, where);
    return peer(addr, port, rank, world, buf, len, deadline, timeout_s, where);
}
