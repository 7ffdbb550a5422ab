/* Syscall rules. Only the syscalls some policy names pay anything: the loader
 * attaches enf_sys_enter to the entry tracepoint of each of those
 * (syscalls:sys_enter_<name>), and enf_raw_sys_enter to the raw sys_enter
 * tracepoint, which sees every syscall of every task, only while a policy
 * refuses by default.
 *
 * A tracepoint cannot fail a syscall: a refused one gets SIGKILL, which ends
 * the caller when the syscall returns. The call itself runs (a mkdir makes
 * its directory); the caller never runs another instruction.
 *
 * With BPF-LSM (ENF_LSM) the syscalls that have an LSM hook of their own
 * (ENF_LSM_SYSCALLS: bpf, perf_event_open, mount) are refused there with EPERM
 * instead, and the tracepoints leave them alone.
 */
#define ENF_NR_MOUNT           165
#define ENF_NR_PERF_EVENT_OPEN 298
#define ENF_NR_BPF             321
#ifdef ENF_LSM
#define enf_lsm_syscall(nr) ((nr) == ENF_NR_BPF || (nr) == ENF_NR_PERF_EVENT_OPEN || (nr) == ENF_NR_MOUNT)
#else
#define enf_lsm_syscall(nr) 0
#endif

ENF_STATE_TABLE("hash", struct enf_syscall_key, u8, syscall_rules, ENF_MAX_SYSCALL_RULES, BPF_F_NO_PREALLOC);
BPF_ARRAY(syscall_event_layout, struct enf_syscall_event, 1);

/* The record of a syscalls:sys_enter_* event (the tracepoint's format file):
 * its size depends on the syscall's arguments, so fields are read with
 * bpf_probe_read_kernel, which the verifier does not hold to the record size. */
struct enf_sys_enter_record {
    u64 common;
    long nr;
    unsigned long args[ENF_SYSCALL_ARGS];
};

/* Where the arguments are: the tracepoint's record, or the raw tracepoint's
 * pt_regs. Read only for a refusal: every hooked syscall passes through here. */
struct enf_syscall_args {
    const unsigned long *record;  /* sys_enter_* record's args, or 0 */
    const char *regs;             /* x86_64 pt_regs, or 0 */
};

/* x86_64 pt_regs (UAPI asm/ptrace.h): the syscall's arguments in rdi, rsi,
 * rdx, r10, r8, r9. */
#define ENF_REG_R10 (7 * 8)
#define ENF_REG_R9  (8 * 8)
#define ENF_REG_R8  (9 * 8)
#define ENF_REG_RDX (12 * 8)
#define ENF_REG_RSI (13 * 8)
#define ENF_REG_RDI (14 * 8)

static __always_inline void read_syscall_args(struct enf_syscall_event *ev, struct enf_syscall_args *where)
{
    if (where->record) {
        bpf_probe_read_kernel(ev->args, sizeof(ev->args), where->record);
        return;
    }
    bpf_probe_read_kernel(&ev->args[0], 8, where->regs + ENF_REG_RDI);
    bpf_probe_read_kernel(&ev->args[1], 8, where->regs + ENF_REG_RSI);
    bpf_probe_read_kernel(&ev->args[2], 8, where->regs + ENF_REG_RDX);
    bpf_probe_read_kernel(&ev->args[3], 8, where->regs + ENF_REG_R10);
    bpf_probe_read_kernel(&ev->args[4], 8, where->regs + ENF_REG_R8);
    bpf_probe_read_kernel(&ev->args[5], 8, where->regs + ENF_REG_R9);
}

/* The sandbox's verdict on syscall nr: 0 (allowed, or no sandbox), else the action. */
static __always_inline u8 syscall_refusal(long nr, struct enf_sandbox **found)
{
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    struct enf_syscall_key key = {.generation = sb->generation, .nr = (u32)nr};
    u8 *rule = syscall_rules.lookup(&key);
    u8 verdict = rule ? *rule : sb->syscall_default;
    if (verdict != ENF_VERDICT_DENY)
        return 0;
    *found = sb;
    return action_of(sb);
}

static __always_inline void report_syscall(struct enf_sandbox *sb, u8 action, long nr, struct enf_syscall_args *where,
                                           u8 lsm, u64 first_arg)
{
    if (!count_denial(sb, ENF_KIND_SYSCALL, action))
        return;
    struct enf_syscall_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_SYSCALL, action);
    ev.nr = (u32)nr;
    ev.lsm = lsm;
    if (where)
        read_syscall_args(&ev, where);
    else
        ev.args[0] = first_arg;
    send_event(sb, &ev, sizeof(ev));
}

static __always_inline void judge_syscall(long nr, struct enf_syscall_args *where)
{
    if (enf_lsm_syscall(nr))
        return;
    struct enf_sandbox *sb = 0;
    u8 action = syscall_refusal(nr, &sb);
    if (!action || !sb)
        return;
    if (action == ENF_ACTION_REFUSED)
        bpf_send_signal(ENF_SIGKILL);
    report_syscall(sb, action, nr, where, 0, 0);
}

#ifdef ENF_LSM
/* EPERM from the syscall's own LSM hook; args[0] of the event is its first argument. */
static __always_inline int refuse_in_lsm(long nr, u64 first_arg)
{
    if (!enf_active())
        return 0;
    struct enf_sandbox *sb = 0;
    u8 action = syscall_refusal(nr, &sb);
    if (!action || !sb)
        return 0;
    report_syscall(sb, action, nr, 0, 1, first_arg);
    return action == ENF_ACTION_REFUSED ? -ENF_EPERM : 0;
}

union bpf_attr;
struct perf_event_attr;
struct path;

LSM_PROBE(bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
    return refuse_in_lsm(ENF_NR_BPF, (u64)cmd);
}

LSM_PROBE(perf_event_open, struct perf_event_attr *attr, int type)
{
    return refuse_in_lsm(ENF_NR_PERF_EVENT_OPEN, (u64)type);
}

LSM_PROBE(sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags, void *data)
{
    return refuse_in_lsm(ENF_NR_MOUNT, (u64)dev_name);
}
#endif

int enf_sys_enter(struct enf_sys_enter_record *ctx)
{
    if (!enf_active())
        return 0;
    long nr = -1;
    bpf_probe_read_kernel(&nr, sizeof(nr), &ctx->nr);
    struct enf_syscall_args where = {.record = ctx->args};
    judge_syscall(nr, &where);
    return 0;
}

/* args: struct pt_regs *regs, long id */
int enf_raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    if (!enf_active())
        return 0;
    struct enf_syscall_args where = {.regs = (const char *)ctx->args[0]};
    judge_syscall((long)ctx->args[1], &where);
    return 0;
}
