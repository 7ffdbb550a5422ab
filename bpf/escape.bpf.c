/* Cgroup escapes: a task of a sandbox moved to a cgroup outside it, by writing
 * a cgroup.procs there (itself, or another task of its sandbox), or a child
 * created there with clone3(CLONE_INTO_CGROUP). The hooks judge a task by its
 * cgroup, so once out nothing applies: the move itself is what must be caught.
 *
 * cgroup:cgroup_attach_task fires after the move, when the task's old cgroup
 * is gone, so the kernel keeps which processes belong to which sandbox
 * (sandboxed_tasks, by tgid: fork adds, exit removes, moves update) and the
 * daemon seeds it with a sandbox's processes when it first applies it.
 *
 * An escape is reported (ENF_KIND_ESCAPE) and, enforcing, the writer gets
 * SIGKILL: when it moved itself, it never runs an instruction outside. A task
 * moved by another is left to the daemon to kill (bpf_send_signal reaches only
 * the current task). Moves inside the sandbox's subtree, and moves by tasks
 * outside every sandbox (the daemon, an orchestrator), are not escapes.
 */

ENF_STATE_TABLE("hash", u32, struct enf_tracked, sandboxed_tasks, ENF_MAX_TRACKED_TASKS, 0);
BPF_ARRAY(escape_event_layout, struct enf_escape_event, 1);

static __always_inline void *task_cgroup(void *task)
{
    void *cset = read_ptr(task, ENF_OFF_TASK_CGROUPS);
    return cset ? read_ptr(cset, ENF_OFF_CSS_SET_DFL_CGRP) : 0;
}

static __always_inline u64 ancestor_id(void *cgrp, int level)
{
    void *ancestor = read_ptr(cgrp, ENF_OFF_CGROUP_ANCESTORS + (u64)level * sizeof(void *));
    void *kn = ancestor ? read_ptr(ancestor, ENF_OFF_CGROUP_KN) : 0;
    u64 id = 0;
    if (kn)
        bpf_probe_read_kernel(&id, sizeof(id), (char *)kn + ENF_OFF_KERNFS_NODE_ID);
    return id;
}

static __always_inline int cgroup_level(void *cgrp)
{
    int level = -1;
    bpf_probe_read_kernel(&level, sizeof(level), (char *)cgrp + ENF_OFF_CGROUP_LEVEL);
    return level;
}

/* Is cgrp the sandbox's cgroup or below it? */
static __always_inline int cgroup_within(void *cgrp, struct enf_tracked *t)
{
    if (!cgrp || cgroup_level(cgrp) < (int)t->level)
        return 0;
    return ancestor_id(cgrp, t->level) == t->sandbox_cgroup_id;
}

/* The sandbox cgrp is in, as a tracked entry; 0 if none. */
static __always_inline int sandbox_of_cgroup(void *cgrp, struct enf_tracked *t)
{
    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    if (!cfg || !cgrp)
        return 0;
    u64 mask = cfg->levels_mask;
    int deepest = cgroup_level(cgrp);
    for (int level = 1; level <= ENF_MAX_LEVEL; level++) {
        if (!(mask >> level) || level > deepest)
            break;
        if (!(mask & (1ULL << level)))
            continue;
        u64 id = ancestor_id(cgrp, level);
        if (id && sandboxes.lookup(&id)) {
            t->sandbox_cgroup_id = id;
            t->level = level;
            return 1;
        }
    }
    return 0;
}

/* Report an escape of sandbox sb; enforcing, kill the writer unless the
 * refusal is by LSM (then the act itself fails: lsm). */
static __always_inline void send_escape(struct enf_sandbox *sb, u32 moved, u64 dst_id, u8 how, u8 moved_is_writer,
                                        u8 lsm, u32 signal)
{
    u8 action = action_of(sb);
    u8 kill = action == ENF_ACTION_REFUSED && !lsm;
    if (kill)
        bpf_send_signal(ENF_SIGKILL);
    if (!count_denial(sb, ENF_KIND_ESCAPE, action))
        return;
    struct enf_escape_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_ESCAPE, action);
    ev.dst_cgroup_id = dst_id;
    ev.moved_tgid = moved;
    ev.how = how;
    ev.writer_killed = kill;
    ev.moved_is_writer = moved_is_writer;
    ev.lsm = lsm;
    ev.signal = signal;
    send_event(sb, &ev, sizeof(ev));
}

static __always_inline void report_escape(struct enf_tracked *t, u32 moved, void *dst, u8 how, u8 moved_is_writer)
{
    struct enf_sandbox *sb = sandboxes.lookup(&t->sandbox_cgroup_id);
    if (!sb)
        return;  /* the sandbox was removed: nothing to hold it to */
    send_escape(sb, moved, ancestor_id(dst, cgroup_level(dst) & ENF_MAX_LEVEL), how, moved_is_writer, 0, 0);
}

/* A signal from a sandbox to the daemon (or to every process: pid -1): the
 * enforcement holds without the daemon, but its going is reported. 1: refuse (LSM). */
static __always_inline int judge_signal(long target, long sig, u8 lsm)
{
    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    if (!sig || !cfg || !cfg->daemon_tgid || (target != (long)cfg->daemon_tgid && target != -1))
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb)
        return 0;
    send_escape(sb, cfg->daemon_tgid, 0, ENF_ESCAPE_SIGNAL, 0, lsm, (u32)sig);
    return action_of(sb) == ENF_ACTION_REFUSED;
}

#ifdef ENF_LSM
struct task_struct;
struct kernel_siginfo;
struct cred;
struct file;

#define ENF_CGROUP2_SUPER_MAGIC 0x63677270
#define ENF_FMODE_WRITE 0x2

/* "cgroup.procs" or "cgroup.threads": the files a move is written to. */
static __always_inline int is_move_file(const char *name)
{
    char buf[16] = {};
    bpf_probe_read_kernel_str(buf, sizeof(buf), name);
    return buf[0] == 'c' && buf[1] == 'g' && buf[6] == '.' &&
           ((buf[7] == 'p' && buf[8] == 'r' && buf[9] == 'o' && buf[10] == 'c' && buf[11] == 's' && !buf[12]) ||
            (buf[7] == 't' && buf[8] == 'h' && buf[9] == 'r' && buf[13] == 's' && !buf[14]));
}

/* With BPF-LSM a move out is refused before it happens: opening, for writing,
 * the cgroup.procs (or cgroup.threads) of a cgroup outside the opener's
 * sandbox fails with EPERM. The attach tracepoint still catches a move through
 * a descriptor opened before the sandbox was (then: killed). Enforcing only:
 * in audit mode the move is let through and the tracepoint reports it. */
LSM_PROBE(file_open, struct file *file)
{
    u32 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), (char *)file + ENF_OFF_FILE_MODE);
    if (!(mode & ENF_FMODE_WRITE))
        return 0;
    void *dentry = read_ptr(file, ENF_OFF_FILE_PATH + ENF_OFF_PATH_DENTRY);
    void *inode = dentry ? read_ptr(dentry, ENF_OFF_DENTRY_INODE) : 0;
    void *sb_ptr = inode ? read_ptr(inode, ENF_OFF_INODE_SB) : 0;
    unsigned long magic = 0;
    if (sb_ptr)
        bpf_probe_read_kernel(&magic, sizeof(magic), (char *)sb_ptr + ENF_OFF_SB_MAGIC);
    if (magic != ENF_CGROUP2_SUPER_MAGIC || !enf_active())
        return 0;
    if (!is_move_file(read_ptr(dentry, ENF_OFF_DENTRY_NAME + ENF_OFF_QSTR_NAME)))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct enf_tracked *t = sandboxed_tasks.lookup(&tgid);
    if (!t)
        return 0;
    struct enf_tracked mine = *t;
    /* The cgroup whose file it is: its directory's kernfs node holds it. */
    void *dir = read_ptr(dentry, ENF_OFF_DENTRY_PARENT);
    void *dir_inode = dir ? read_ptr(dir, ENF_OFF_DENTRY_INODE) : 0;
    void *kn = dir_inode ? read_ptr(dir_inode, ENF_OFF_INODE_PRIVATE) : 0;
    void *cgrp = kn ? read_ptr(kn, ENF_OFF_KERNFS_NODE_PRIV) : 0;
    if (!cgrp || cgroup_within(cgrp, &mine))
        return 0;
    struct enf_sandbox *sb = sandboxes.lookup(&mine.sandbox_cgroup_id);
    if (!sb || action_of(sb) != ENF_ACTION_REFUSED)
        return 0;
    send_escape(sb, 0, ancestor_id(cgrp, cgroup_level(cgrp) & ENF_MAX_LEVEL), ENF_ESCAPE_MOVE, 0, 1, 0);
    return -ENF_EPERM;
}

LSM_PROBE(task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)
{
    if (!enf_active())
        return 0;
    u32 tgid = 0;
    bpf_probe_read_kernel(&tgid, sizeof(tgid), (char *)p + ENF_OFF_TASK_TGID);
    return judge_signal(tgid, sig, 1) ? -ENF_EPERM : 0;
}
#else
TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    if (enf_active())
        judge_signal(args->pid, args->sig, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_tkill)
{
    if (enf_active())
        judge_signal(args->pid, args->sig, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_tgkill)
{
    if (enf_active())
        judge_signal(args->tgid, args->sig, 0);
    return 0;
}
#endif

/* A process the table has no room for is not followed: counted, so that
 * status can say that some moves out would go unreported. */
static __always_inline void track(u32 tgid, struct enf_tracked *where)
{
    if (sandboxed_tasks.update(&tgid, where))
        count_global(ENF_GLOBAL_UNTRACKED);
}

/* args: struct task_struct *parent, struct task_struct *child (current: the parent) */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    if (!enf_active())
        return 0;
    void *child = (void *)ctx->args[1];
    u32 pid = 0, tgid = 0;
    bpf_probe_read_kernel(&pid, sizeof(pid), (char *)child + ENF_OFF_TASK_PID);
    bpf_probe_read_kernel(&tgid, sizeof(tgid), (char *)child + ENF_OFF_TASK_TGID);
    if (pid != tgid)
        return 0;  /* a thread: its process is tracked already */
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    struct enf_tracked *t = sandboxed_tasks.lookup(&parent);
    void *cgrp = task_cgroup(child);
    if (!t) {
        /* Created straight into a sandbox (clone3 CLONE_INTO_CGROUP from outside). */
        struct enf_tracked into = {};
        if (cgrp != task_cgroup((void *)bpf_get_current_task()) && sandbox_of_cgroup(cgrp, &into))
            track(tgid, &into);
        return 0;
    }
    struct enf_tracked copy = *t;
    if (cgroup_within(cgrp, &copy)) {
        track(tgid, &copy);
        return 0;
    }
    report_escape(&copy, tgid, cgrp, ENF_ESCAPE_CLONE, 0);
    return 0;
}

/* args: struct task_struct *p (current: the exiting task) */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id == tgid)
        sandboxed_tasks.delete(&tgid);
    return 0;
}

/* args: struct cgroup *dst_cgrp, const char *path, struct task_struct *task, bool threadgroup */
RAW_TRACEPOINT_PROBE(cgroup_attach_task)
{
    if (!enf_active())
        return 0;
    void *dst = (void *)ctx->args[0];
    void *task = (void *)ctx->args[2];
    u32 tgid = 0;
    bpf_probe_read_kernel(&tgid, sizeof(tgid), (char *)task + ENF_OFF_TASK_TGID);
    struct enf_tracked now = {};
    int into_sandbox = sandbox_of_cgroup(dst, &now);
    struct enf_tracked *before = sandboxed_tasks.lookup(&tgid);
    if (before && !cgroup_within(dst, before)) {
        struct enf_tracked left = *before;
        u32 writer = bpf_get_current_pid_tgid() >> 32;
        struct enf_tracked *w = writer == tgid ? &left : sandboxed_tasks.lookup(&writer);
        if (w && w->sandbox_cgroup_id == left.sandbox_cgroup_id)
            report_escape(&left, tgid, dst, ENF_ESCAPE_MOVE, writer == tgid);
        /* else moved out by someone outside the sandbox: not an escape */
    }
    if (into_sandbox)
        track(tgid, &now);
    else if (before)
        sandboxed_tasks.delete(&tgid);
    return 0;
}
