/* Microbenchmarks: N operations, prints nanoseconds per operation.
 *   micro udp N     - connect a UDP socket to 127.0.0.1:9 (no packet is sent)
 *   micro tcp N     - full TCP handshake to a local listener, then close
 *   micro recv N    - sendto a UDP socket's own address, then recvfrom (the
 *                   recvmsg hook that restores redirected DNS answers runs here)
 *   micro spawn N   - fork, execve("/bin/true"), wait
 *   micro getpid N  - the getpid syscall (no libc cache: syscall(SYS_getpid)): what
 *                   a syscall hook adds to the cheapest call
 *   micro refuse RATE SECONDS - sendto 127.0.0.1:9 at RATE per second (0: as fast as
 *                   possible) for SECONDS; prints how many calls were made. Under
 *                   a policy that refuses it, each call is one denial.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int listener;

static void *acceptor(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return NULL;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int spawn_true(long n)
{
    char *child_argv[] = {"/bin/true", NULL};
    char *envp[] = {NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            execve(child_argv[0], child_argv, envp);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "spawn: child failed (status %d)\n", status);
            return 1;
        }
    }
    return 0;
}

static long refuse_paced(long rate, double seconds)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    long long start = now_ns(), end = start + (long long)(seconds * 1e9);
    long sent = 0;
    for (;;) {
        long long now = now_ns();
        if (now >= end)
            break;
        if (rate > 0) {
            long long due = start + sent * 1000000000LL / rate;
            if (now < due) {
                struct timespec pause = {0, (long)(due - now < 1000000 ? due - now : 1000000)};
                nanosleep(&pause, NULL);
                continue;
            }
        }
        sendto(s, "x", 1, 0, (struct sockaddr *)&addr, sizeof(addr));
        sent++;
    }
    return sent;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "refuse") == 0) {
        printf("%ld\n", refuse_paced(atol(argv[2]), atof(argv[3])));
        return 0;
    }
    if (argc != 3)
        return 2;
    int tcp = strcmp(argv[1], "tcp") == 0;
    long n = atol(argv[2]);
    if (strcmp(argv[1], "getpid") == 0) {
        long long start = now_ns();
        for (long i = 0; i < n; i++)
            syscall(SYS_getpid);
        printf("%.1f\n", (double)(now_ns() - start) / n);
        return 0;
    }
    if (strcmp(argv[1], "spawn") == 0) {
        long long start = now_ns();
        if (spawn_true(n) != 0)
            return 1;
        printf("%.1f\n", (double)(now_ns() - start) / n);
        return 0;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (tcp) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        addr.sin_port = 0;
        bind(listener, (struct sockaddr *)&addr, sizeof(addr));
        socklen_t len = sizeof(addr);
        getsockname(listener, (struct sockaddr *)&addr, &len);
        listen(listener, 4096);
        pthread_t t;
        pthread_create(&t, NULL, acceptor, NULL);
    }
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (strcmp(argv[1], "recv") == 0) {
        addr.sin_port = 0;
        bind(udp, (struct sockaddr *)&addr, sizeof(addr));
        socklen_t len = sizeof(addr);
        getsockname(udp, (struct sockaddr *)&addr, &len);
        char buf[16];
        long long start = now_ns();
        for (long i = 0; i < n; i++) {
            struct sockaddr_in from;
            socklen_t from_len = sizeof(from);
            if (sendto(udp, "x", 1, 0, (struct sockaddr *)&addr, sizeof(addr)) != 1 ||
                recvfrom(udp, buf, sizeof(buf), 0, (struct sockaddr *)&from, &from_len) != 1) {
                perror("recv");
                return 1;
            }
        }
        printf("%.1f\n", (double)(now_ns() - start) / n);
        return 0;
    }
    long long start = now_ns();
    for (long i = 0; i < n; i++) {
        if (tcp) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
                perror("connect");
                return 1;
            }
            struct linger lg = {1, 0};  /* RST on close: no TIME_WAIT pile-up */
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(s);
        } else if (connect(udp, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
            perror("connect");
            return 1;
        }
    }
    printf("%.1f\n", (double)(now_ns() - start) / n);
    return 0;
}
