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

#define ENF_MAX_EXEC_IDS    262144   /* exec identity entries over all sandboxes and generations */
#define ENF_MAX_EXEC_PATHS  262144   /* exec path entries, likewise */
#define ENF_PATH_MAX        244      /* bytes of a path in an exec path key, with its NUL */
#define ENF_ARGV_BYTES      512      /* argv bytes kept for an exec denial */
#define ENF_ARGV_MAX_ARGS   32       /* arguments read at most */
#define ENF_EVENT_PATH      256      /* bytes of the executed path in an exec denial */
#define ENF_WALK_MAX        64       /* parent directories and mounts walked from an executed file */
#define ENF_MAX_MAJOR       4096     /* device majors are 12 bits */
#define ENF_ESCALATE_MAX    256      /* largest escalation threshold (a power of two) */
#define ENF_MAX_NAME_ADDRS  65536    /* addresses learned from allowed DNS answers, all sandboxes */
#define ENF_MAX_NAME_GRANTS 8        /* name-rule port ranges one learned address can carry */
#define ENF_MAX_DNS_SOCKETS 65536    /* sockets whose DNS destination was redirected (LRU) */
#define ENF_MAX_FORWARDERS  4096     /* (sandbox, network namespace) pairs with a DNS forwarder */
#define ENF_DNS_PORT        53
#define ENF_MAX_SYSCALL_RULES 65536  /* (generation, syscall) entries over all sandboxes */
#define ENF_SYSCALL_ARGS    6
#define ENF_MAX_TRACKED_TASKS 65536  /* processes known to be in a sandbox, all sandboxes */

#define ENF_KIND_CONNECT 1
#define ENF_KIND_SENDMSG 2
#define ENF_KIND_SOCKET  3
#define ENF_KIND_EXEC    4
#define ENF_KIND_DEVICE  5
#define ENF_KIND_ESCALATION 6  /* not a denial: the escalation fired (not counted by kind) */
#define ENF_KIND_DNS     7   /* a query for a name the policy does not list: the daemon's forwarder reports it */
#define ENF_KIND_SYSCALL 8
#define ENF_KIND_ESCAPE  9   /* a task of a sandbox moved out of it (see enf_escape_event) */
#define ENF_NUM_KINDS    16  /* a power of two above the largest kind */

#define ENF_ESCALATE_QUARANTINE 1
#define ENF_ESCALATE_FREEZE     2
#define ENF_ESCALATE_KILL       3

#define ENF_ACTION_REFUSED 1
#define ENF_ACTION_AUDITED 2

#define ENF_MODE_ENFORCE 1
#define ENF_MODE_AUDIT   2

#define ENF_VERDICT_DENY  1
#define ENF_VERDICT_ALLOW 2
#define ENF_VERDICT_NONE  0   /* enf_sandbox.exec_default: the policy has no exec section */

/* enf_exec_key values: what the policy says of one file or directory identity. */
#define ENF_EXEC_FILE_ALLOW 1
#define ENF_EXEC_FILE_DENY  2
#define ENF_EXEC_DIR_ALLOW  4
#define ENF_EXEC_DIR_DENY   8

/* enf_exec_event.reason */
#define ENF_REASON_NOT_ALLOWED 1  /* no allow entry covers the file, and the default is deny */
#define ENF_REASON_DENIED      2  /* a deny entry covers the file (by identity, directory or name) */
#define ENF_REASON_UNNAMED     3  /* the file has no name: memfd, deleted, O_TMPFILE */
#define ENF_REASON_UNRESOLVED  4  /* the parent chain was not walked to the root within bounds */
#define ENF_REASON_SCRIPT      5  /* a #! script whose path is not allowed */

/* protocol in a port rule: 0 matches any */
#define ENF_PROTO_ANY 0

/* Index into the per-CPU globals array. */
#define ENF_GLOBAL_UNATTRIBUTED 0  /* refusals of sockets in a guarded cgroup with no sandbox found */
#define ENF_GLOBAL_LOST         1  /* events the ring buffer could not take, all sandboxes */
#define ENF_GLOBAL_UNTRACKED    2  /* sandboxed processes sandboxed_tasks had no room for */
#define ENF_NUM_GLOBALS         3

/* sandboxes: key is the sandbox cgroup's id (u64). */
struct enf_sandbox {
    __u32 generation;   /* selects this version's rules in the rule maps */
    __u32 slot;         /* index into counters, rate and escalation */
    __u32 tag;          /* names the sandbox and its labels in events; changes with the labels */
    __u32 escalate_after;       /* denials that fire the escalation; 0: none */
    __u64 escalate_within_ns;   /* ... when they fall within this window */
    __u8  mode;         /* ENF_MODE_* */
    __u8  default_verdict;  /* network default, ENF_VERDICT_* */
    __u8  exec_default;     /* ENF_VERDICT_*, or ENF_VERDICT_NONE: exec is not judged */
    __u8  gpu;              /* ENF_VERDICT_*: may GPU device nodes be opened */
    __u8  escalate_action;  /* ENF_ESCALATE_* */
    __u8  dns;              /* 1: port-53 traffic goes to the daemon's forwarder; learned addresses count */
    __u8  syscall_default;  /* ENF_VERDICT_*: a syscall the rules do not name (seen only where hooked) */
    __u8  _pad[1];
};

/* escalation: per slot, the times of the last ENF_ESCALATE_MAX denials. Written
 * only by the kernel (and zeroed by the daemon on release or a new sandbox), so
 * rewriting the sandbox entry (relabel, replace) can never lift a quarantine. */
struct enf_escalation {
    __u64 count;        /* denials so far (refused or audited) */
    __u64 fired;        /* 0, or the count at which the escalation fired */
    __u64 quarantined;  /* 1: every network call of the sandbox is refused */
    __u64 times[ENF_ESCALATE_MAX];
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

/* exec_ids: the identity of a file or directory named by an exec entry.
 * dev is the kernel's encoding (major << 20 | minor), as in super_block.s_dev. */
struct enf_exec_key {
    __u32 generation;
    __u32 dev;
    __u64 ino;
};

/* exec_paths: LPM trie over path bytes. A directory entry "/usr/lib/" is a
 * prefix; a file entry "/usr/bin/x" includes its NUL, so it matches only itself.
 * The value (ENF_VERDICT_*) already folds in every shorter entry covering it. */
struct enf_path_key {
    __u32 prefixlen;
    __u32 generation_be;
    char  path[ENF_PATH_MAX];
};

/* enf_escape_event.how */
#define ENF_ESCAPE_MOVE  1   /* written into a cgroup.procs outside the sandbox */
#define ENF_ESCAPE_CLONE 2   /* created outside it: clone3(CLONE_INTO_CGROUP) */
#define ENF_ESCAPE_SIGNAL 3  /* a signal to the daemon (moved_tgid: the daemon) */

/* sandboxed_tasks: by tgid, the sandbox a process belongs to, kept by the
 * kernel (fork, exit, cgroup moves) and seeded by the daemon at an apply, so
 * that a move out is known for what it left. */
struct enf_tracked {
    __u64 sandbox_cgroup_id;
    __u32 level;            /* of the sandbox's cgroup */
    __u32 _pad;
};

/* syscall_rules: what a generation says of one syscall number (ENF_VERDICT_*). */
struct enf_syscall_key {
    __u32 generation;
    __u32 nr;
};

/* exec_args: argv as a process in an exec-guarded sandbox passed it to execve,
 * by thread id, read back when the exec is judged. */
struct enf_exec_args {
    __u32 argc;         /* arguments read (at most ENF_ARGV_MAX_ARGS) */
    __u32 len;          /* bytes used in buf, NULs included, at most ENF_ARGV_BYTES */
    __u8  truncated;    /* more arguments or bytes than were kept */
    __u8  _pad[7];
    char  comm[16];     /* the caller's name before the exec */
    char  buf[2 * ENF_ARGV_BYTES];  /* twice: the verifier needs room past the last offset */
};

struct enf_config {
    __u64 levels_mask;      /* bit n set: some sandbox cgroup sits at level n */
    __u64 events_per_sec;   /* per sandbox per CPU; 0 = no limit */
    __u32 daemon_tgid;      /* a signal to it from a sandbox is an escape (ENF_ESCAPE_SIGNAL) */
    __u32 _pad;
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

/* Every ring buffer record starts with this; kind says which one follows. */
struct enf_event_head {
    __u64 boot_ns;          /* bpf_ktime_get_boot_ns() */
    __u64 cgroup_id;        /* the task's own cgroup */
    __u32 generation;
    __u32 slot;
    __u32 tgid;
    __u32 tid;
    char  comm[16];
    __u8  kind;             /* ENF_KIND_* */
    __u8  action;           /* ENF_ACTION_* */
    __u8  _pad[2];
    __u32 tag;              /* enf_sandbox.tag when the kernel refused */
};

/* ENF_KIND_CONNECT, ENF_KIND_SENDMSG, ENF_KIND_SOCKET */
struct enf_net_event {
    struct enf_event_head head;
    __u8  family;           /* AF_INET / AF_INET6 of the destination, or of the socket */
    __u8  sock_type;        /* SOCK_* */
    __u16 port;             /* host byte order */
    __u16 protocol;         /* IPPROTO_* */
    __u16 _pad;
    __u8  addr[16];         /* IPv4 in the first 4 bytes */
};

/* ENF_KIND_EXEC */
struct enf_exec_event {
    struct enf_event_head head;
    __u32 ppid;
    __u8  reason;           /* ENF_REASON_* */
    __u8  script;           /* the path is a #! script (or binfmt_misc input) */
    __u8  argv_truncated;
    __u8  _pad;
    __u32 argc;             /* arguments in argv */
    __u32 argv_len;
    __u32 dev;              /* identity of the file that would have run */
    __u32 _pad2;
    __u64 ino;
    char  path[ENF_EVENT_PATH];   /* as the caller passed it */
    char  argv[ENF_ARGV_BYTES];   /* NUL-separated */
};

/* ENF_KIND_ESCALATION */
struct enf_escalation_event {
    struct enf_event_head head;
    __u64 count;            /* the denial that fired it */
    __u64 within_ns;
    __u32 after;
    __u8  escalate_action;  /* ENF_ESCALATE_* */
    __u8  acted;            /* 0 in audit mode */
    __u8  _pad[2];
};

/* ENF_KIND_SYSCALL */
struct enf_syscall_event {
    struct enf_event_head head;
    __u32 nr;               /* this architecture's number */
    __u8  lsm;              /* refused with EPERM by a BPF-LSM hook (else: SIGKILL at entry) */
    __u8  compat;           /* a 32-bit call: nr is its i386 number, unless lsm (then the x86_64 one the hook stands for) */
    __u8  _pad[2];
    __u64 args[ENF_SYSCALL_ARGS];  /* as passed; only the syscall's own are meaningful */
};

/* ENF_KIND_ESCAPE: head names the task that made the move (the writer). */
struct enf_escape_event {
    struct enf_event_head head;
    __u64 dst_cgroup_id;    /* where the moved task went */
    __u32 moved_tgid;
    __u8  how;              /* ENF_ESCAPE_* */
    __u8  writer_killed;    /* the kernel killed the writer (SIGKILL at the move) */
    __u8  moved_is_writer;  /* ... which is the moved task itself */
    __u8  lsm;              /* refused with EPERM by BPF-LSM: nothing moved, no signal delivered */
    __u32 signal;           /* ENF_ESCAPE_SIGNAL: the signal number */
    __u32 _pad;
};

/* ENF_KIND_DEVICE */
struct enf_device_event {
    struct enf_event_head head;
    __u32 major;
    __u32 minor;
    __u32 access;           /* BPF_DEVCG_ACC_* bits */
    __u32 dev_type;         /* BPF_DEVCG_DEV_* */
};

/* DNS by name (bpf/dns.bpf.c). A sandbox with dns set has its port-53 connects
 * and datagrams redirected to the daemon's forwarder for its network namespace;
 * the forwarder installs the addresses of allowed answers in name_addrs. */

/* dns_forwarders: where a sandbox's forwarder listens in one network namespace
 * (127.0.0.1 and ::1 there). Ports in host byte order; 0: no listener. */
struct enf_fwd_key {
    __u32 slot;
    __u32 _pad;
    __u64 netns_cookie;     /* bpf_get_netns_cookie / SO_NETNS_COOKIE */
};

struct enf_forwarder {
    __u16 udp4;
    __u16 tcp4;
    __u16 udp6;
    __u16 tcp6;
};

/* dns_sockets: by socket cookie, the resolver a redirected socket asked for, so
 * that recvmsg and getpeername show it instead of the forwarder. */
struct enf_dns_origin {
    __u8  addr[16];         /* as the caller gave it (IPv4 in the first 4 bytes, or IPv4-mapped) */
    __u16 port_be;
    __u16 fwd_port_be;      /* the forwarder port it was sent to */
    __u8  family;           /* AF_INET: a v4 socket; AF_INET6: a v6 socket (addr may be v4-mapped) */
    __u8  _pad[3];
};

/* name_addrs: an address an allowed name resolved to, for one generation. */
struct enf_name_key {
    __u32 generation;
    __u32 family;           /* AF_INET / AF_INET6 */
    __u8  addr[16];         /* IPv4 in the first 4 bytes */
};

struct enf_name_grant {
    __u64 expires_ns;       /* bpf_ktime_get_boot_ns() after which it no longer allows */
    __u16 first;
    __u16 last;
    __u8  protocol;         /* IPPROTO_TCP, IPPROTO_UDP or ENF_PROTO_ANY */
    __u8  _pad[3];
};

struct enf_name_grants {
    __u32 count;
    __u32 _pad;
    struct enf_name_grant grants[ENF_MAX_NAME_GRANTS];
};

/* dns_counters: per slot, written only by the daemon (its forwarder decides
 * DNS denials); pinned with the kernel's counters so both outlive a restart. */
struct enf_dns_counters {
    __u64 refused;
    __u64 audited;
    __u64 suppressed;
    __u64 lost;
};

#endif
