/* Map and event layouts shared by the BPF programs and the daemon.
 *
 * This header is the one definition of every layout that crosses the kernel
 * boundary. enforcer/kernel/layout.py mirrors it with ctypes, and
 * tests/e2e/test_layout.py checks the mirror against what bcc compiled from here.
 * Only fixed-width types: nothing here depends on kernel-internal structs.
 */
#ifndef ENFORCER_H
#define ENFORCER_H

#define ENF_MAX_SANDBOXES   1024
#define ENF_MAX_PORT_RULES  16       /* rules that can cover one address prefix */
#define ENF_MAX_PREFIXES    262144   /* LPM entries over all sandboxes and generations */
#define ENF_MAX_LEVEL       63       /* deepest cgroup level a sandbox can sit at */
#define ENF_RINGBUF_PAGES   1024     /* 4 MiB of events */

/* enf_config.flags */
#define ENF_KIND_CONNECT 1
#define ENF_KIND_SENDMSG 2
#define ENF_KIND_SOCKET  3
#define ENF_NUM_KINDS    4

#define ENF_ACTION_REFUSED 1
#define ENF_ACTION_AUDITED 2

#define ENF_MODE_ENFORCE 1
#define ENF_MODE_AUDIT   2

#define ENF_VERDICT_DENY  1
#define ENF_VERDICT_ALLOW 2

/* protocol in a port rule: 0 matches any */
#define ENF_PROTO_ANY 0

/* Index into the per-CPU globals array. */
#define ENF_GLOBAL_UNATTRIBUTED 0  /* refusals of sockets in a guarded cgroup with no sandbox found */
#define ENF_GLOBAL_LOST         1  /* events the ring buffer could not take, all sandboxes */
#define ENF_NUM_GLOBALS         2

/* sandboxes: key is the sandbox cgroup's id (u64). */
struct enf_sandbox {
    __u32 generation;   /* selects this version's rules in the LPM trie */
    __u32 slot;         /* index into counters and rate */
    __u8  mode;         /* ENF_MODE_* */
    __u8  default_verdict;  /* ENF_VERDICT_* */
    __u8  _pad[6];
};

/* rules: LPM trie key. Everything after prefixlen is matched bit by bit, so the
 * generation and family (big-endian) are part of the prefix: prefixlen is
 * 64 + the address prefix length. IPv4 addresses use the first 4 bytes of addr. */
struct enf_lpm_key {
    __u32 prefixlen;
    __u32 generation_be;
    __u32 family_be;
    __u8  addr[16];
};

struct enf_port_rule {
    __u16 first;
    __u16 last;
    __u8  protocol;   /* IPPROTO_TCP, IPPROTO_UDP or ENF_PROTO_ANY */
    __u8  verdict;    /* ENF_VERDICT_* */
    __u8  _pad[2];
};

/* Every rule whose prefix covers this entry's prefix, so one lookup decides. */
struct enf_rule_set {
    __u32 count;
    __u32 _pad;
    struct enf_port_rule rules[ENF_MAX_PORT_RULES];
};

struct enf_config {
    __u64 levels_mask;      /* bit n set: some sandbox cgroup sits at level n */
    __u64 events_per_sec;   /* per sandbox per CPU; 0 = no limit */
};

struct enf_counters {
    __u64 refused[ENF_NUM_KINDS];
    __u64 audited[ENF_NUM_KINDS];
    __u64 suppressed;       /* counted, not reported: over the event rate limit */
    __u64 lost;             /* counted, not reported: ring buffer full */
};

struct enf_rate {
    __u64 window_start_ns;
    __u64 count;
};

struct enf_event {
    __u64 boot_ns;          /* bpf_ktime_get_boot_ns() */
    __u64 cgroup_id;        /* the task's own cgroup */
    __u32 generation;
    __u32 slot;
    __u32 tgid;
    __u32 tid;
    char  comm[16];
    __u8  kind;             /* ENF_KIND_* */
    __u8  action;           /* ENF_ACTION_* */
    __u8  family;           /* AF_INET / AF_INET6 of the destination, or of the socket */
    __u8  sock_type;        /* SOCK_* */
    __u16 port;             /* host byte order */
    __u16 protocol;         /* IPPROTO_* */
    __u8  addr[16];         /* IPv4 in the first 4 bytes */
};

#endif
