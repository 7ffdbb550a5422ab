/* DNS by name: redirect a sandbox's port-53 traffic to the daemon's forwarder,
 * show the process the resolver it asked for, and allow the addresses that
 * allowed names resolved to.
 *
 * network.bpf.c calls dns_redirect() for a port-53 connect/sendmsg of a sandbox
 * whose policy names hosts, before any rule is consulted: whatever resolver the
 * process picked, the query reaches the forwarder (127.0.0.1 or ::1 in the
 * socket's own network namespace), which answers only names the policy lists.
 * The forwarder writes the answered addresses into name_addrs before it
 * replies, so the connect that follows finds them. Only UAPI fields are read.
 */

ENF_STATE_TABLE("hash", struct enf_fwd_key, struct enf_forwarder, dns_forwarders, ENF_MAX_FORWARDERS, 0);
/* LRU: an entry lives as long as its socket is likely to; a closed socket's
 * entry is reclaimed by the next ones instead of by a close hook. */
ENF_STATE_TABLE("lru_hash", u64, struct enf_dns_origin, dns_sockets, ENF_MAX_DNS_SOCKETS, 0);
ENF_STATE_TABLE("hash", struct enf_name_key, struct enf_name_grants, name_addrs, ENF_MAX_NAME_ADDRS, BPF_F_NO_PREALLOC);
ENF_STATE_TABLE("array", u32, struct enf_dns_counters, dns_counters, ENF_MAX_SANDBOXES, 0);

#define ENF_LOOPBACK4 0x7f000001
#define ENF_IPPROTO_TCP 6

/* bcc declares this helper as returning u32; socket cookies are u64. */
static u64 (*enf_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* 1: redirected to the forwarder (let the call go on), 0: no forwarder serves
 * this network namespace (refuse: the query must not reach the resolver). */
static __always_inline int dns_redirect(struct bpf_sock_addr *ctx, struct enf_sandbox *sb,
                                        u8 family, int v6_socket, u8 proto)
{
    struct enf_fwd_key fk = {};
    fk.slot = sb->slot;
    fk.netns_cookie = bpf_get_netns_cookie(ctx);
    struct enf_forwarder *fwd = dns_forwarders.lookup(&fk);
    if (!fwd)
        return 0;
    u16 port;
    if (family == ENF_AF_INET)
        port = proto == ENF_IPPROTO_TCP ? fwd->tcp4 : fwd->udp4;
    else
        port = proto == ENF_IPPROTO_TCP ? fwd->tcp6 : fwd->udp6;
    if (!port)
        return 0;

    struct enf_dns_origin origin = {};
    if (v6_socket) {
        u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
        __builtin_memcpy(origin.addr, &w0, 4);
        __builtin_memcpy(origin.addr + 4, &w1, 4);
        __builtin_memcpy(origin.addr + 8, &w2, 4);
        __builtin_memcpy(origin.addr + 12, &w3, 4);
        origin.family = ENF_AF_INET6;
    } else {
        u32 ip = ctx->user_ip4;
        __builtin_memcpy(origin.addr, &ip, 4);
        origin.family = ENF_AF_INET;
    }
    origin.port_be = (u16)ctx->user_port;
    origin.fwd_port_be = enf_be16(port);
    u64 cookie = enf_socket_cookie(ctx);
    dns_sockets.update(&cookie, &origin);

    if (!v6_socket) {
        ctx->user_ip4 = enf_be32(ENF_LOOPBACK4);
    } else if (family == ENF_AF_INET) {  /* a v4-mapped resolver: the v4 listener, v4-mapped */
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = enf_be32(0x0000ffff);
        ctx->user_ip6[3] = enf_be32(ENF_LOOPBACK4);
    } else {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = enf_be32(1);
    }
    ctx->user_port = enf_be16(port);
    return 1;
}

/* 1 if an allowed name resolved to this address (for this generation) with a
 * port rule that covers the call, and the answer's TTL (+ grace) has not run out. */
static __always_inline int name_allows(struct enf_sandbox *sb, struct enf_lpm_key *key, u8 family,
                                       u16 port, u8 proto)
{
    struct enf_name_key nk = {};
    nk.generation = sb->generation;
    nk.family = family;
    __builtin_memcpy(nk.addr, key->addr, sizeof(nk.addr));
    struct enf_name_grants *set = name_addrs.lookup(&nk);
    if (!set)
        return 0;
    u64 now = bpf_ktime_get_boot_ns();
#pragma unroll
    for (int i = 0; i < ENF_MAX_NAME_GRANTS; i++) {
        if (i >= set->count)
            break;
        struct enf_name_grant *g = &set->grants[i];
        if (now >= g->expires_ns)
            continue;
        if (g->protocol != ENF_PROTO_ANY && g->protocol != proto)
            continue;
        if (port >= g->first && port <= g->last)
            return 1;
    }
    return 0;
}

/* The reply came from the forwarder this socket was redirected to: show the
 * resolver the process addressed. recvmsg and getpeername hooks may not refuse
 * (they must return 1). */
static __always_inline struct enf_dns_origin *redirected(struct bpf_sock_addr *ctx)
{
    u64 cookie = enf_socket_cookie(ctx);
    struct enf_dns_origin *origin = dns_sockets.lookup(&cookie);
    if (!origin || (u16)ctx->user_port != origin->fwd_port_be)
        return 0;
    return origin;
}

static __always_inline void restore4(struct bpf_sock_addr *ctx)
{
    struct enf_dns_origin *origin = redirected(ctx);
    if (!origin || origin->family != ENF_AF_INET || ctx->user_ip4 != enf_be32(ENF_LOOPBACK4))
        return;
    u32 ip;
    __builtin_memcpy(&ip, origin->addr, 4);
    ctx->user_ip4 = ip;
    ctx->user_port = origin->port_be;
}

static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
    struct enf_dns_origin *origin = redirected(ctx);
    if (!origin || origin->family != ENF_AF_INET6)
        return;
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    int loop6 = w0 == 0 && w1 == 0 && w2 == 0 && w3 == enf_be32(1);
    int loop4 = w0 == 0 && w1 == 0 && w2 == enf_be32(0x0000ffff) && w3 == enf_be32(ENF_LOOPBACK4);
    if (!loop6 && !loop4)
        return;
    u32 a[4];
    __builtin_memcpy(a, origin->addr, 16);
    ctx->user_ip6[0] = a[0];
    ctx->user_ip6[1] = a[1];
    ctx->user_ip6[2] = a[2];
    ctx->user_ip6[3] = a[3];
    ctx->user_port = origin->port_be;
}

int enf_recvmsg4(struct bpf_sock_addr *ctx) { restore4(ctx); return 1; }
int enf_recvmsg6(struct bpf_sock_addr *ctx) { restore6(ctx); return 1; }
int enf_getpeername4(struct bpf_sock_addr *ctx) { restore4(ctx); return 1; }
int enf_getpeername6(struct bpf_sock_addr *ctx) { restore6(ctx); return 1; }
