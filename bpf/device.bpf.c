/* GPU device guard for guarded sandboxes.
 *
 * A cgroup device program, attached with BPF_F_ALLOW_MULTI to each sandbox's
 * cgroup: the kernel asks it on open() and mknod() of a device node by a task in
 * that cgroup or below. Character devices whose major is marked in gpu_majors
 * (NVIDIA, DRI/render, AMD KFD; filled by the loader from /proc/devices) are
 * refused unless the sandbox's policy grants the GPU. Every other device is left
 * to whatever else decides (other device programs, file permissions).
 */

ENF_STATE_TABLE("array", u32, u8, gpu_majors, ENF_MAX_MAJOR, 0);

#define ENF_DEVCG_DEV_CHAR 2

int enf_device(struct bpf_cgroup_dev_ctx *ctx)
{
    u32 dev_type = ctx->access_type & 0xFFFF;
    u32 access = ctx->access_type >> 16;
    if (dev_type != ENF_DEVCG_DEV_CHAR)
        return 1;
    u32 major = ctx->major;
    u8 *is_gpu = gpu_majors.lookup(&major);
    if (!is_gpu || !*is_gpu)
        return 1;
    struct enf_sandbox *sb = sandbox_of_task();
    if (!sb) {
        count_global(ENF_GLOBAL_UNATTRIBUTED);
        return 0;
    }
    if (sb->gpu == ENF_VERDICT_ALLOW)
        return 1;
    u8 action = action_of(sb);
    if (count_denial(sb, ENF_KIND_DEVICE, action)) {
        struct enf_device_event ev = {};
        fill_head(&ev.head, sb, ENF_KIND_DEVICE, action);
        ev.major = major;
        ev.minor = ctx->minor;
        ev.access = access;
        ev.dev_type = dev_type;
        send_event(sb, &ev, sizeof(ev));
    }
    return action == ENF_ACTION_AUDITED;
}
