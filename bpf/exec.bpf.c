/* Exec enforcement for guarded sandboxes whose policy has an exec section.
 *
 * The file that runs is judged by its identity (device + inode), never by the
 * name it was called by: a copy, a link or a ".." path of a refused binary has
 * either a refused identity or an identity no allow entry names. Directory
 * entries are matched by walking the executed file's real parent chain, across
 * mounts, up to the root. Names are used only where no file is left to judge
 * (a #! script: the kernel has already swapped it for its interpreter) and to
 * refuse a denied name whose file was replaced since the policy was applied.
 *
 * Kernel-internal fields are read at ENF_OFF_* offsets that the loader takes
 * from the running kernel's BTF (enforcer/kernel/btf.py) and passes with -D.
 *
 * Two ways to stop an exec, chosen by the loader:
 * - ENF_LSM: bprm_check_security returns -EPERM; the exec fails.
 * - otherwise: sched_process_exec fires after the point of no return, and
 *   bpf_send_signal(SIGKILL) kills the process before the new image runs an
 *   instruction.
 */


ENF_STATE_TABLE("hash", struct enf_exec_key, u32, exec_ids, ENF_MAX_EXEC_IDS, BPF_F_NO_PREALLOC);
ENF_STATE_TABLE("lpm_trie", struct enf_path_key, u8, exec_paths, ENF_MAX_EXEC_PATHS, BPF_F_NO_PREALLOC);
/* Shared across builds too: argv captured by one build is found by the other
 * when a hand-over falls between an execve and its judgement. */
ENF_STATE_TABLE("lru_hash", u32, struct enf_exec_args, exec_args, 4096, 0);
BPF_PERCPU_ARRAY(exec_args_scratch, struct enf_exec_args, 1);
BPF_PERCPU_ARRAY(exec_event_scratch, struct enf_exec_event, 1);
BPF_PERCPU_ARRAY(path_key_scratch, struct enf_path_key, 1);

static __always_inline void *read_ptr(void *base, u64 offset)
{
    void *value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (char *)base + offset);
    return value;
}

/* ---- argv, captured at the syscall --------------------------------------- */

static __always_inline void capture_argv(const char *const *argv)
{
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb || sb->exec_default == ENF_VERDICT_NONE)
        return;
    int zero = 0;
    struct enf_exec_args *a = exec_args_scratch.lookup(&zero);
    if (!a)
        return;
    a->argc = 0;
    a->truncated = 0;
    bpf_get_current_comm(a->comm, sizeof(a->comm));
    u32 off = 0;
    for (int i = 0; i < ENF_ARGV_MAX_ARGS; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) != 0 || !arg)
            break;
        if (off >= ENF_ARGV_BYTES) {
            a->truncated = 1;
            break;
        }
        int n = bpf_probe_read_user_str(&a->buf[off & (ENF_ARGV_BYTES - 1)], ENF_ARGV_BYTES, arg);
        if (n <= 0)
            break;
        off += n;
        a->argc = i + 1;
        if (i == ENF_ARGV_MAX_ARGS - 1) {
            const char *next = 0;
            bpf_probe_read_user(&next, sizeof(next), &argv[i + 1]);
            a->truncated = next != 0;
        }
    }
    if (off > ENF_ARGV_BYTES) {
        off = ENF_ARGV_BYTES;
        a->truncated = 1;
    }
    a->len = off;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_args.update(&tid, a);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    if (!enf_active())
        return 0;
    capture_argv((const char *const *)args->argv);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    if (!enf_active())
        return 0;
    capture_argv((const char *const *)args->argv);
    return 0;
}

/* ---- judging the file ------------------------------------------------------ */

struct enf_judgement {
    const char *filename;  /* bprm->filename: the path as the caller passed it */
    u32 flags;    /* ENF_EXEC_* bits found for the file and its directories */
    u32 dev;
    u64 ino;
    u8  reason;   /* set when the file is refused whatever the entries say */
};

static __always_inline u32 identity_flags(struct enf_sandbox *sb, void *inode, u32 *dev, u64 *ino)
{
    void *sb_ptr = read_ptr(inode, ENF_OFF_INODE_SB);
    struct enf_exec_key key = {};
    key.generation = sb->generation;
    bpf_probe_read_kernel(&key.dev, sizeof(key.dev), (char *)sb_ptr + ENF_OFF_SB_DEV);
    bpf_probe_read_kernel(&key.ino, sizeof(key.ino), (char *)inode + ENF_OFF_INODE_INO);
    *dev = key.dev;
    *ino = key.ino;
    u32 *flags = exec_ids.lookup(&key);
    return flags ? *flags : 0;
}

static __always_inline void judge_file(struct enf_sandbox *sb, void *file, struct enf_judgement *j)
{
    /* The inode of the path's dentry, not file->f_inode: on overlayfs f_inode is
     * the inode of the layer below, while stat() of the path (which is what the
     * daemon resolved the policy entries with) reports the overlay's inode. On
     * other file systems the two are the same inode. */
    void *dentry = read_ptr(file, ENF_OFF_FILE_PATH + ENF_OFF_PATH_DENTRY);
    void *vfsmnt = read_ptr(file, ENF_OFF_FILE_PATH + ENF_OFF_PATH_MNT);
    void *inode = dentry ? read_ptr(dentry, ENF_OFF_DENTRY_INODE) : 0;
    if (!inode) {
        j->reason = ENF_REASON_UNRESOLVED;
        return;
    }
    u32 nlink = 0;
    bpf_probe_read_kernel(&nlink, sizeof(nlink), (char *)inode + ENF_OFF_INODE_NLINK);
    u32 file_flags = identity_flags(sb, inode, &j->dev, &j->ino);
    j->flags |= file_flags & (ENF_EXEC_FILE_ALLOW | ENF_EXEC_FILE_DENY);
    if (nlink == 0) {
        /* memfd, O_TMPFILE, or unlinked: no directory vouches for it. */
        j->reason = ENF_REASON_UNNAMED;
        return;
    }

    void *mnt = (char *)vfsmnt - ENF_OFF_MOUNT_MNT;
    int reached_root = 0;
    for (int i = 0; i < ENF_WALK_MAX; i++) {
        if (!dentry || !vfsmnt)
            break;
        if (dentry == read_ptr(vfsmnt, ENF_OFF_VFSMOUNT_ROOT)) {
            void *parent_mnt = read_ptr(mnt, ENF_OFF_MOUNT_PARENT);
            if (!parent_mnt || parent_mnt == mnt) {
                reached_root = 1;
                break;
            }
            /* Continue from the directory this file system is mounted on. */
            dentry = read_ptr(mnt, ENF_OFF_MOUNT_MOUNTPOINT);
            mnt = parent_mnt;
            vfsmnt = (char *)mnt + ENF_OFF_MOUNT_MNT;
            continue;
        }
        void *parent = read_ptr(dentry, ENF_OFF_DENTRY_PARENT);
        if (!parent || parent == dentry) {
            reached_root = parent == dentry;
            break;
        }
        dentry = parent;
        void *dir_inode = read_ptr(dentry, ENF_OFF_DENTRY_INODE);
        if (dir_inode) {
            u32 dev;
            u64 ino;
            j->flags |= identity_flags(sb, dir_inode, &dev, &ino) & (ENF_EXEC_DIR_ALLOW | ENF_EXEC_DIR_DENY);
        }
    }
    if (!reached_root)
        j->reason = ENF_REASON_UNRESOLVED;
}

/* Load a path string into the scratch LPM key; 0 if it is not absolute or too long. */
static __always_inline struct enf_path_key *path_key(struct enf_sandbox *sb, const char *path)
{
    int zero = 0;
    struct enf_path_key *key = path_key_scratch.lookup(&zero);
    if (!key || !path)
        return 0;
    int n = bpf_probe_read_kernel_str(key->path, sizeof(key->path), path);
    if (n <= 0 || n >= (int)sizeof(key->path) || key->path[0] != '/')
        return 0;
    key->generation_be = enf_be32(sb->generation);
    key->prefixlen = 32 + 8 * n;   /* the NUL included: file entries match whole names only */
    return key;
}

static __always_inline u8 path_verdict(struct enf_path_key *key)
{
    u8 *verdict = exec_paths.lookup(key);
    return verdict ? *verdict : 0;
}

/* A path with no ".", ".." or empty component: its text says where it is. */
static __always_inline int path_is_plain(struct enf_path_key *key)
{
    char p3 = 0, p2 = 0, p1 = 0;   /* the three characters before c */
    for (int i = 0; i < ENF_PATH_MAX; i++) {
        char c = key->path[i];
        if (i > 0 && (c == '/' || c == 0)) {
            if (p1 == '/')
                return 0;                                   /* "//", or a trailing "/" */
            if (p1 == '.' && p2 == '/')
                return 0;                                   /* "/." */
            if (p1 == '.' && p2 == '.' && p3 == '/')
                return 0;                                   /* "/.." */
        }
        if (c == 0)
            return 1;
        p3 = p2;
        p2 = p1;
        p1 = c;
    }
    return 0;
}

/* The decision for one exec. Returns 1 to allow, 0 to refuse; fills j. */
static __always_inline int judge_exec(struct enf_sandbox *sb, void *bprm, struct enf_judgement *j, u8 *script)
{
    j->filename = read_ptr(bprm, ENF_OFF_BPRM_FILENAME);  /* judged below, and reported */
    void *file = read_ptr(bprm, ENF_OFF_BPRM_FILE);
    if (!file) {
        j->reason = ENF_REASON_UNRESOLVED;
        return 0;
    }
    judge_file(sb, file, j);
    if (j->flags & (ENF_EXEC_FILE_DENY | ENF_EXEC_DIR_DENY)) {
        j->reason = ENF_REASON_DENIED;
        return 0;
    }
    if (j->reason)
        return 0;

    const char *filename = j->filename;
    struct enf_path_key *key = path_key(sb, filename);
    u8 by_name = key ? path_verdict(key) : 0;
    if (by_name == ENF_VERDICT_DENY) {
        j->reason = ENF_REASON_DENIED;
        return 0;
    }
#ifndef ENF_LSM
    /* binfmt_script replaced bprm->file with the interpreter and dropped the
     * script's file, so the script can only be judged by its path: absolute,
     * plain, and named by an allow entry. (With BPF-LSM the script itself passes
     * through bprm_check_security and is judged by identity instead.) */
    const char *interp = read_ptr(bprm, ENF_OFF_BPRM_INTERP);
    if (interp != filename) {
        *script = 1;
        if (!key || !path_is_plain(key) || by_name != ENF_VERDICT_ALLOW) {
            j->reason = ENF_REASON_SCRIPT;
            return 0;
        }
    }
#endif
    if (j->flags & (ENF_EXEC_FILE_ALLOW | ENF_EXEC_DIR_ALLOW))
        return 1;
    if (sb->exec_default == ENF_VERDICT_ALLOW)
        return 1;
    j->reason = ENF_REASON_NOT_ALLOWED;
    return 0;
}

static __always_inline void report_exec(struct enf_sandbox *sb, struct enf_judgement *j, u8 script, u8 action,
                                        u32 caller_tid)
{
    if (!count_denial(sb, ENF_KIND_EXEC, action))
        return;
    int zero = 0;
    struct enf_exec_event *ev = exec_event_scratch.lookup(&zero);
    if (!ev)
        return;
    fill_head(&ev->head, sb, ENF_KIND_EXEC, action);
    ev->reason = j->reason;
    ev->script = script;
    ev->dev = j->dev;
    ev->ino = j->ino;
    void *task = (void *)bpf_get_current_task();
    void *parent = read_ptr(task, ENF_OFF_TASK_REAL_PARENT);
    ev->ppid = 0;
    bpf_probe_read_kernel(&ev->ppid, sizeof(ev->ppid), (char *)parent + ENF_OFF_TASK_TGID);
    ev->path[0] = 0;
    bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), j->filename);

    struct enf_exec_args *a = exec_args.lookup(&caller_tid);
    if (a) {
        __builtin_memcpy(ev->head.comm, a->comm, sizeof(ev->head.comm));
        ev->argc = a->argc;
        ev->argv_truncated = a->truncated;
        u32 len = a->len;
        if (len > ENF_ARGV_BYTES)
            len = ENF_ARGV_BYTES;
        ev->argv_len = len;
        bpf_probe_read_kernel(ev->argv, ENF_ARGV_BYTES, a->buf);
    } else {
        ev->argc = 0;
        ev->argv_len = 0;
        ev->argv_truncated = 1;
    }
    send_event(sb, ev, sizeof(*ev));
}

#ifdef ENF_LSM
struct linux_binprm;

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
    if (!enf_active())
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb || sb->exec_default == ENF_VERDICT_NONE)
        return 0;
    struct enf_judgement j = {};
    u8 script = 0;
    if (judge_exec(sb, bprm, &j, &script))
        return 0;
    u8 action = action_of(sb);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    report_exec(sb, &j, script, action, tid);
    return action == ENF_ACTION_REFUSED ? -ENF_EPERM : 0;
}
#else
/* args: struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    if (!enf_active())
        return 0;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb || sb->exec_default == ENF_VERDICT_NONE)
        return 0;
    void *bprm = (void *)ctx->args[2];
    u32 caller_tid = (u32)ctx->args[1];
    struct enf_judgement j = {};
    u8 script = 0;
    int allowed = judge_exec(sb, bprm, &j, &script);
    if (!allowed) {
        u8 action = action_of(sb);
        if (action == ENF_ACTION_REFUSED)
            bpf_send_signal(ENF_SIGKILL);
        report_exec(sb, &j, script, action, caller_tid);
    }
    exec_args.delete(&caller_tid);
    return 0;
}
#endif
