/* Syscall rules. Only the syscalls some policy names pay anything: the loader
 * attaches enf_sys_enter to the entry tracepoint of each of those
 * (syscalls:sys_enter_<name>), and enf_raw_sys_enter to the raw sys_enter
 * tracepoint, which sees every syscall of every task, only while a policy
 * refuses by default.
 *
 * A tracepoint cannot fail a syscall: a refused one gets SIGKILL, which ends
 * the caller when the syscall returns. The call itself runs (a mkdir makes
 * its directory); the caller never runs another instruction.
 */

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

static __always_inline void judge_syscall(long nr, struct enf_syscall_args *where)
{
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return;
    struct enf_syscall_key key = {.generation = sb->generation, .nr = (u32)nr};
    u8 *rule = syscall_rules.lookup(&key);
    u8 verdict = rule ? *rule : sb->syscall_default;
    if (verdict != ENF_VERDICT_DENY)
        return;
    u8 action = action_of(sb);
    if (action == ENF_ACTION_REFUSED)
        bpf_send_signal(ENF_SIGKILL);
    if (!count_denial(sb, ENF_KIND_SYSCALL, action))
        return;
    struct enf_syscall_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_SYSCALL, action);
    ev.nr = (u32)nr;
    read_syscall_args(&ev, where);
    send_event(sb, &ev, sizeof(ev));
}

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
