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

ENF_STATE_TABLE("lpm_trie", struct enf_lpm_key, struct enf_rule_set, rules, ENF_MAX_PREFIXES, BPF_F_NO_PREALLOC);

#define ENF_JUDGE_REFUSE  0   /* no rule allows it (a default deny) */
#define ENF_JUDGE_ALLOW   1
#define ENF_JUDGE_DENIED  2   /* a deny rule covers it: nothing, not even a name, allows it */

static __always_inline int judge(struct enf_sandbox *sb, struct enf_lpm_key *key, u16 port, u8 proto)
{
    int fallback = sb->default_verdict == ENF_VERDICT_ALLOW ? ENF_JUDGE_ALLOW : ENF_JUDGE_REFUSE;
    struct enf_rule_set *set = rules.lookup(key);
    if (!set)
        return fallback;
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
            return ENF_JUDGE_DENIED;
        allowed = 1;
    }
    return allowed ? ENF_JUDGE_ALLOW : fallback;
}

/* Returns what the sock_addr hook returns: 1 lets the call go on, 0 makes it EPERM. */
static __always_inline int decide(struct bpf_sock_addr *ctx, struct enf_lpm_key *key,
                                  u8 family, u8 kind, int v6_socket)
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
    if (!quarantined(sb)) {
        if (sb->dns && port == ENF_DNS_PORT) {
            /* Whatever resolver it names, a query goes to the forwarder; with no
             * forwarder in this network namespace it goes nowhere. */
            if (dns_redirect(ctx, sb, family, v6_socket, proto))
                return 1;
        } else {
            int verdict = judge(sb, key, port, proto);
            if (verdict == ENF_JUDGE_ALLOW)
                return 1;
            if (verdict == ENF_JUDGE_REFUSE && sb->dns && name_allows(sb, key, family, port, proto))
                return 1;
        }
    }

    u8 action = action_of(sb);
    if (count_denial(sb, kind, action)) {
        struct enf_net_event ev = {};
        fill_head(&ev.head, sb, kind, action);
        ev.family = family;
        ev.sock_type = (u8)ctx->type;
        ev.port = port;
        ev.protocol = proto;
        __builtin_memcpy(ev.addr, key->addr, sizeof(ev.addr));
        send_event(sb, &ev, sizeof(ev));
    }
    return action == ENF_ACTION_AUDITED;
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, u8 kind)
{
    struct enf_lpm_key key = {};
    key.prefixlen = 64 + 32;
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(key.addr, &ip, 4);
    return decide(ctx, &key, ENF_AF_INET, kind, 0);
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
        return decide(ctx, &key, ENF_AF_INET, kind, 1);
    }
    key.prefixlen = 64 + 128;
    __builtin_memcpy(key.addr, &w0, 4);
    __builtin_memcpy(key.addr + 4, &w1, 4);
    __builtin_memcpy(key.addr + 8, &w2, 4);
    __builtin_memcpy(key.addr + 12, &w3, 4);
    return decide(ctx, &key, ENF_AF_INET6, kind, 1);
}

/* cgroup programs need no enf_active(): a restarted daemon swaps them in
 * atomically (BPF_F_REPLACE), so each cgroup runs one build's at a time. */
int enf_connect4(struct bpf_sock_addr *ctx) { return decide4(ctx, ENF_KIND_CONNECT); }
int enf_connect6(struct bpf_sock_addr *ctx) { return decide6(ctx, ENF_KIND_CONNECT); }
int enf_sendmsg4(struct bpf_sock_addr *ctx) { return decide4(ctx, ENF_KIND_SENDMSG); }
int enf_sendmsg6(struct bpf_sock_addr *ctx) { return decide6(ctx, ENF_KIND_SENDMSG); }

static __always_inline void report_socket(struct enf_sandbox *sb, u8 action, u8 family, u8 type, u16 protocol)
{
    if (!count_denial(sb, ENF_KIND_SOCKET, action))
        return;
    struct enf_net_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_SOCKET, action);
    ev.family = family;
    ev.sock_type = type;
    ev.protocol = protocol;
    send_event(sb, &ev, sizeof(ev));
}

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

    u8 action = action_of(sb);
    report_socket(sb, action, (u8)sk->family, (u8)type, (u16)protocol);
    return action == ENF_ACTION_AUDITED;
}

/* Packet sockets bypass every cgroup socket hook. With BPF-LSM, socket_create
 * refuses them with EPERM (io_uring's IORING_OP_SOCKET passes there too; the
 * hook itself is in syscall.bpf.c, which also judges socket rules there).
 * Without it the only guard is to stop the process at the syscall: it is
 * killed before socket() returns a descriptor. */
#ifdef ENF_LSM
static __always_inline int refuse_packet_socket(struct enf_sandbox *sb, int family, int type, int protocol)
{
    if (family != ENF_AF_PACKET)
        return 0;
    u8 action = action_of(sb);
    report_socket(sb, action, ENF_AF_PACKET, (u8)type, (u16)protocol);
    return action == ENF_ACTION_REFUSED ? -ENF_EPERM : 0;
}
#else
TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    if (args->family != ENF_AF_PACKET || !enf_active())
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    u8 action = action_of(sb);
    if (action == ENF_ACTION_REFUSED)
        bpf_send_signal(ENF_SIGKILL);
    report_socket(sb, action, ENF_AF_PACKET, (u8)args->type, (u16)args->protocol);
    return 0;
}
#endif
