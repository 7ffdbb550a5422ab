/* Network egress enforcement for guarded sandboxes.
 *
 * Attached with BPF_F_ALLOW_MULTI to each sandbox's cgroup, so the kernel runs
 * these programs for every socket created in that cgroup or below it, and for no
 * other socket on the host. The sandbox whose rules apply is found from the
 * calling task's cgroup. When the two differ (a guarded socket handed to a
 * process outside every sandbox) the call is refused: fail closed. Stamping
 * each socket with its sandbox (sk storage) was measured at ~2 us per TCP
 * socket lifetime, over the 5% budget for a loopback connect.
 *
 * Only UAPI structs and helpers: no kernel-internal layout is read here.
 */
#include <uapi/linux/bpf.h>
#include "enforcer.h"

#define ENF_AF_INET      2
#define ENF_AF_INET6    10
#define ENF_AF_PACKET   17
#define ENF_SOCK_DGRAM   2
#define ENF_SOCK_RAW     3
#define ENF_IPPROTO_ICMP     1
#define ENF_IPPROTO_ICMPV6  58
#define ENF_SIGKILL      9

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the byte swaps below assume a little-endian host"
#endif
#define enf_be16(x) __builtin_bswap16(x)
#define enf_be32(x) __builtin_bswap32(x)

BPF_HASH(sandboxes, u64, struct enf_sandbox, ENF_MAX_SANDBOXES);
BPF_LPM_TRIE(rules, struct enf_lpm_key, struct enf_rule_set, ENF_MAX_PREFIXES);
BPF_ARRAY(config, struct enf_config, 1);
BPF_PERCPU_ARRAY(counters, struct enf_counters, ENF_MAX_SANDBOXES);
BPF_PERCPU_ARRAY(rate, struct enf_rate, ENF_MAX_SANDBOXES);
BPF_PERCPU_ARRAY(globals, u64, ENF_NUM_GLOBALS);
BPF_RINGBUF_OUTPUT(events, ENF_RINGBUF_PAGES);
/* Never read or written: it exists so the layout test can see struct enf_event
 * as bcc compiled it (a ring buffer carries no type). */
BPF_ARRAY(event_layout, struct enf_event, 1);

/* The sandbox whose cgroup is the current task's cgroup or one of its ancestors.
 * Sandboxes never nest (the daemon refuses it), so the first hit is the only one. */
static __always_inline struct enf_sandbox *sandbox_of_task(void)
{
    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    u64 mask = cfg->levels_mask;
#pragma unroll
    for (int level = 1; level <= ENF_MAX_LEVEL; level++) {
        if (!(mask >> level))
            break;
        if (!(mask & (1ULL << level)))
            continue;
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            break;
        struct enf_sandbox *sb = sandboxes.lookup(&id);
        if (sb)
            return sb;
    }
    return 0;
}

static __always_inline void count_global(int index)
{
    u64 *value = globals.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

/* Count exactly, then report unless over the per-sandbox event budget. The
 * verdict never depends on either: callers decide before calling this. */
static __always_inline void report(struct enf_sandbox *sb, struct enf_event *ev)
{
    u32 slot = sb->slot;
    struct enf_counters *c = counters.lookup(&slot);
    if (!c)
        return;
    u32 kind = ev->kind & (ENF_NUM_KINDS - 1);
    if (ev->action == ENF_ACTION_REFUSED)
        __sync_fetch_and_add(&c->refused[kind], 1);
    else
        __sync_fetch_and_add(&c->audited[kind], 1);

    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    struct enf_rate *r = rate.lookup(&slot);
    if (cfg && r && cfg->events_per_sec) {
        u64 now = bpf_ktime_get_ns();
        if (now - r->window_start_ns >= 1000000000ULL) {
            r->window_start_ns = now;
            r->count = 0;
        }
        if (r->count >= cfg->events_per_sec) {
            __sync_fetch_and_add(&c->suppressed, 1);
            return;
        }
        r->count++;
    }

    ev->boot_ns = bpf_ktime_get_boot_ns();
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->generation = sb->generation;
    ev->slot = slot;
    u64 id = bpf_get_current_pid_tgid();
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0) {
        __sync_fetch_and_add(&c->lost, 1);
        count_global(ENF_GLOBAL_LOST);
    }
}

/* 1: allowed by the rules (or the default), 0: refused. */
static __always_inline int judge(struct enf_sandbox *sb, struct enf_lpm_key *key, u16 port, u8 proto)
{
    int default_allow = sb->default_verdict == ENF_VERDICT_ALLOW;
    struct enf_rule_set *set = rules.lookup(key);
    if (!set)
        return default_allow;
    int allowed = 0;
#pragma unroll
    for (int i = 0; i < ENF_MAX_PORT_RULES; i++) {
        if (i >= set->count)
            break;
        struct enf_port_rule *r = &set->rules[i];
        if (r->protocol != ENF_PROTO_ANY && r->protocol != proto)
            continue;
        if (port < r->first || port > r->last)
            continue;
        if (r->verdict == ENF_VERDICT_DENY)
            return 0;
        allowed = 1;
    }
    return allowed ? 1 : default_allow;
}

/* Returns what the sock_addr hook returns: 1 lets the call go on, 0 makes it EPERM. */
static __always_inline int decide(struct bpf_sock_addr *ctx, struct enf_lpm_key *key,
                                  u8 family, u8 kind)
{
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb) {
        /* Our program runs only for sockets created under a guarded cgroup, so
         * the caller is outside the sandbox that owns the socket: fail closed. */
        count_global(ENF_GLOBAL_UNATTRIBUTED);
        return 0;
    }
    u16 port = enf_be16((u16)ctx->user_port);
    u8 proto = (u8)ctx->protocol;
    key->generation_be = enf_be32(sb->generation);
    key->family_be = enf_be32((u32)family);
    if (judge(sb, key, port, proto))
        return 1;

    struct enf_event ev = {};
    ev.kind = kind;
    ev.family = family;
    ev.sock_type = (u8)ctx->type;
    ev.port = port;
    ev.protocol = proto;
    __builtin_memcpy(ev.addr, key->addr, sizeof(ev.addr));
    if (sb->mode == ENF_MODE_AUDIT) {
        ev.action = ENF_ACTION_AUDITED;
        report(sb, &ev);
        return 1;
    }
    ev.action = ENF_ACTION_REFUSED;
    report(sb, &ev);
    return 0;
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, u8 kind)
{
    struct enf_lpm_key key = {};
    key.prefixlen = 64 + 32;
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(key.addr, &ip, 4);
    return decide(ctx, &key, ENF_AF_INET, kind);
}

static __always_inline int decide6(struct bpf_sock_addr *ctx, u8 kind)
{
    struct enf_lpm_key key = {};
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
    u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    /* ::ffff:a.b.c.d is an IPv4 destination and is judged by the IPv4 rules. */
    if (w0 == 0 && w1 == 0 && w2 == enf_be32(0x0000ffff)) {
        key.prefixlen = 64 + 32;
        __builtin_memcpy(key.addr, &w3, 4);
        return decide(ctx, &key, ENF_AF_INET, kind);
    }
    key.prefixlen = 64 + 128;
    __builtin_memcpy(key.addr, &w0, 4);
    __builtin_memcpy(key.addr + 4, &w1, 4);
    __builtin_memcpy(key.addr + 8, &w2, 4);
    __builtin_memcpy(key.addr + 12, &w3, 4);
    return decide(ctx, &key, ENF_AF_INET6, kind);
}

int enf_connect4(struct bpf_sock_addr *ctx) { return decide4(ctx, ENF_KIND_CONNECT); }
int enf_connect6(struct bpf_sock_addr *ctx) { return decide6(ctx, ENF_KIND_CONNECT); }
int enf_sendmsg4(struct bpf_sock_addr *ctx) { return decide4(ctx, ENF_KIND_SENDMSG); }
int enf_sendmsg6(struct bpf_sock_addr *ctx) { return decide6(ctx, ENF_KIND_SENDMSG); }

/* Socket creation (inet and inet6 only: the hook sees no other family). Refuses
 * raw sockets (no connect/sendmsg hook runs for them) and, under a default-deny
 * policy, ICMP datagram sockets (their sendto() without connect() has no hook). */
int enf_sock_create(struct bpf_sock *sk)
{
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb) {
        count_global(ENF_GLOBAL_UNATTRIBUTED);
        return 0;
    }
    u32 type = sk->type;
    u32 protocol = sk->protocol;
    int refuse = type == ENF_SOCK_RAW;
    if (type == ENF_SOCK_DGRAM && (protocol == ENF_IPPROTO_ICMP || protocol == ENF_IPPROTO_ICMPV6))
        refuse = sb->default_verdict != ENF_VERDICT_ALLOW;
    if (!refuse)
        return 1;

    struct enf_event ev = {};
    ev.kind = ENF_KIND_SOCKET;
    ev.family = (u8)sk->family;
    ev.sock_type = (u8)type;
    ev.protocol = (u16)protocol;
    ev.action = sb->mode == ENF_MODE_AUDIT ? ENF_ACTION_AUDITED : ENF_ACTION_REFUSED;
    report(sb, &ev);
    return ev.action == ENF_ACTION_AUDITED;
}

/* Packet sockets bypass every cgroup socket hook, and this kernel has no LSM
 * hook we can load, so the only guard is to stop the process at the syscall:
 * it is killed before socket() returns a descriptor. */
TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    if (args->family != ENF_AF_PACKET)
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    struct enf_event ev = {};
    ev.kind = ENF_KIND_SOCKET;
    ev.family = ENF_AF_PACKET;
    ev.sock_type = (u8)args->type;
    ev.protocol = (u16)args->protocol;
    ev.action = sb->mode == ENF_MODE_AUDIT ? ENF_ACTION_AUDITED : ENF_ACTION_REFUSED;
    if (ev.action == ENF_ACTION_REFUSED)
        bpf_send_signal(ENF_SIGKILL);
    report(sb, &ev);
    return 0;
}
