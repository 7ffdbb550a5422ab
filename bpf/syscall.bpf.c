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
 * 32-bit syscalls (int 0x80, or a 32-bit program) never reach the per-syscall
 * tracepoints (the kernel leaves compat calls out of them) and carry the i386
 * numbers: the raw sys_enter judges them by the sandbox's default alone.
 *
 * With BPF-LSM (ENF_LSM) the syscalls that have an LSM hook standing for them
 * (ENF_LSM_SYSCALL, from enforcer/kernel/syscall_hooks.py LSM_SYSCALLS) are
 * refused there with EPERM instead, whichever ABI made the call, and the
 * tracepoints leave them alone.
 */
#ifndef ENF_LSM_SYSCALL
#define ENF_LSM_SYSCALL(nr) 0
#endif
/* i386 numbers of the calls whose LSM hook is shared with other syscalls (ABI, stable). */
#define ENF_NR32_PTRACE             26
#define ENF_NR32_PROCESS_VM_READV  347
#define ENF_NR32_PROCESS_VM_WRITEV 348
#define ENF_NR32_SOCKETPAIR        360
/* x86 thread_info.status: the task is in a 32-bit syscall (arch/x86 TS_COMPAT). */
#define ENF_TS_COMPAT 0x0002

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
#define ENF_REG_ORIG_AX (15 * 8)  /* the syscall's number */

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

static __always_inline u8 in_compat_syscall(void)
{
    u32 status = 0;
    bpf_probe_read_kernel(&status, sizeof(status),
                          (char *)bpf_get_current_task() + ENF_OFF_TASK_THREAD_INFO + ENF_OFF_THREAD_INFO_STATUS);
    return (status & ENF_TS_COMPAT) ? 1 : 0;
}

/* The sandbox's verdict on syscall nr: 0 (allowed), else the action. A 32-bit
 * call's number is not this architecture's: only the default counts. */
static __always_inline u8 sandbox_refuses(struct enf_sandbox *sb, long nr, u8 compat)
{
    struct enf_syscall_key key = {.generation = sb->generation, .nr = (u32)nr};
    u8 *rule = compat ? 0 : syscall_rules.lookup(&key);
    u8 verdict = rule ? *rule : sb->syscall_default;
    return verdict == ENF_VERDICT_DENY ? action_of(sb) : 0;
}

static __always_inline void report_syscall(struct enf_sandbox *sb, u8 action, long nr, struct enf_syscall_args *where,
                                           u8 lsm, u8 compat)
{
    if (!count_denial(sb, ENF_KIND_SYSCALL, action))
        return;
    struct enf_syscall_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_SYSCALL, action);
    ev.nr = (u32)nr;
    ev.lsm = lsm;
    ev.compat = compat;
    read_syscall_args(&ev, where);
    send_event(sb, &ev, sizeof(ev));
}

static __always_inline void judge_syscall(struct enf_sandbox *sb, long nr, u8 compat,
                                          struct enf_syscall_args *where)
{
    if (!compat && ENF_LSM_SYSCALL(nr))
        return;
    u8 action = sandbox_refuses(sb, nr, compat);
    if (!action)
        return;
    if (action == ENF_ACTION_REFUSED)
        bpf_send_signal(ENF_SIGKILL);
    report_syscall(sb, action, nr, where, 0, compat);
}

#ifdef ENF_LSM
/* The syscall the current task is in, read from its saved registers: an LSM
 * hook shared by several syscalls (ptrace_access_check, socket_create) refuses
 * only for the ones a rule names. */
struct enf_current_call {
    const char *regs;
    long nr;   /* orig_ax: this ABI's number */
    u8 compat;
};

static __always_inline void read_current_call(struct enf_current_call *call)
{
    call->regs = (const char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    call->nr = -1;
    bpf_probe_read_kernel(&call->nr, sizeof(call->nr), call->regs + ENF_REG_ORIG_AX);
    call->compat = in_compat_syscall();
}

/* The task's sandbox, where an LSM hook has one to judge by (0: none, or
 * enforcement not active). Hooks shared with every task of the host look it
 * up first, and once. */
static __always_inline struct enf_sandbox *lsm_sandbox(void)
{
    return enf_active() ? sandbox_of_task() : 0;
}

/* EPERM if sb refuses the syscall rule_nr stands for (x86_64 number; -1: none).
 * call: the task's current call if the hook has read it, else 0 (then it is
 * read only for a refusal). */
static __always_inline int refuse_in_lsm(struct enf_sandbox *sb, long rule_nr, struct enf_current_call *call)
{
    if (!sb || rule_nr < 0)
        return 0;
    u8 action = sandbox_refuses(sb, rule_nr, 0);
    if (!action)
        return 0;
    struct enf_current_call read = {};
    if (!call) {
        read_current_call(&read);
        call = &read;
    }
    /* A 32-bit call under a default-deny policy: the raw sys_enter has reported it. */
    if (!(call->compat && sb->syscall_default == ENF_VERDICT_DENY)) {
        struct enf_syscall_args where = {.regs = call->regs};
        report_syscall(sb, action, rule_nr, &where, 1, call->compat);
    }
    return action == ENF_ACTION_REFUSED ? -ENF_EPERM : 0;
}

/* ptrace_access_check also guards /proc/<pid>/mem, kcmp, pidfd_getfd...: only
 * the ptrace and process_vm_* syscalls are refused there. */
static __always_inline long ptrace_rule(struct enf_current_call *call)
{
    long nr = call->nr;
    if (call->compat)
        return nr == ENF_NR32_PTRACE ? ENF_NR_PTRACE
             : nr == ENF_NR32_PROCESS_VM_READV ? ENF_NR_PROCESS_VM_READV
             : nr == ENF_NR32_PROCESS_VM_WRITEV ? ENF_NR_PROCESS_VM_WRITEV : -1;
    return (nr == ENF_NR_PTRACE || nr == ENF_NR_PROCESS_VM_READV || nr == ENF_NR_PROCESS_VM_WRITEV) ? nr : -1;
}

union bpf_attr;
struct perf_event_attr;
struct path;
struct file;
struct task_struct;

LSM_PROBE(bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
    return refuse_in_lsm(lsm_sandbox(), ENF_NR_BPF, 0);
}

LSM_PROBE(perf_event_open, struct perf_event_attr *attr, int type)
{
    return refuse_in_lsm(lsm_sandbox(), ENF_NR_PERF_EVENT_OPEN, 0);
}

LSM_PROBE(sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags, void *data)
{
    return refuse_in_lsm(lsm_sandbox(), ENF_NR_MOUNT, 0);
}

LSM_PROBE(ptrace_access_check, struct task_struct *child, unsigned int mode)
{
    struct enf_sandbox *sb = lsm_sandbox();
    if (!sb)
        return 0;
    struct enf_current_call call;
    read_current_call(&call);
    return refuse_in_lsm(sb, ptrace_rule(&call), &call);
}

LSM_PROBE(ptrace_traceme, struct task_struct *parent)
{
    return refuse_in_lsm(lsm_sandbox(), ENF_NR_PTRACE, 0);
}

/* init_module and kexec_load hand the kernel a buffer; finit_module and
 * kexec_file_load a file. Firmware, policies and certificates pass too. */
LSM_PROBE(kernel_load_data, int id, bool contents)
{
    long rule = id == ENF_LOADING_MODULE ? ENF_NR_INIT_MODULE : id == ENF_LOADING_KEXEC_IMAGE ? ENF_NR_KEXEC_LOAD : -1;
    return rule < 0 ? 0 : refuse_in_lsm(lsm_sandbox(), rule, 0);
}

LSM_PROBE(kernel_read_file, struct file *file, int id, bool contents)
{
    long rule = id == ENF_READING_MODULE ? ENF_NR_FINIT_MODULE
              : (id == ENF_READING_KEXEC_IMAGE || id == ENF_READING_KEXEC_INITRAMFS) ? ENF_NR_KEXEC_FILE_LOAD : -1;
    return rule < 0 ? 0 : refuse_in_lsm(lsm_sandbox(), rule, 0);
}

/* socket() and socketpair() (and i386 socketcall, io_uring's socket op); kern:
 * a socket the kernel makes for itself. Packet sockets first (network.bpf.c). */
LSM_PROBE(socket_create, int family, int type, int protocol, int kern)
{
    struct enf_sandbox *sb = kern ? 0 : lsm_sandbox();
    if (!sb)
        return 0;
    int refused = refuse_packet_socket(sb, family, type, protocol);
    if (refused)
        return refused;
    struct enf_current_call call;
    read_current_call(&call);
    int pair = call.compat ? call.nr == ENF_NR32_SOCKETPAIR : call.nr == ENF_NR_SOCKETPAIR;
    return refuse_in_lsm(sb, pair ? ENF_NR_SOCKETPAIR : ENF_NR_SOCKET, &call);
}
#endif

int enf_sys_enter(struct enf_sys_enter_record *ctx)
{
    if (!enf_active())
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    long nr = -1;
    bpf_probe_read_kernel(&nr, sizeof(nr), &ctx->nr);
    struct enf_syscall_args where = {.record = ctx->args};
    judge_syscall(sb, nr, 0, &where);
    return 0;
}

/* args: struct pt_regs *regs, long id */
int enf_raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    /* Every syscall of every task passes here: a task outside every sandbox
     * costs the lookup alone, not the read of its compat state. */
    if (!enf_active())
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    struct enf_syscall_args where = {.regs = (const char *)ctx->args[0]};
    judge_syscall(sb, (long)ctx->args[1], in_compat_syscall(), &where);
    return 0;
}
