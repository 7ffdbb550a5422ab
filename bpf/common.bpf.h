/* Maps and helpers shared by every Enforcer program (bpf/enforcer.bpf.c
 * includes this first). Only UAPI structs and helpers here. */
#include <uapi/linux/bpf.h>
#include "enforcer.h"

#define ENF_AF_INET      2
#define ENF_AF_INET6    10
#define ENF_AF_PACKET   17
#define ENF_SOCK_DGRAM   2
#define ENF_SOCK_RAW     3
#define ENF_IPPROTO_ICMP     1
#define ENF_IPPROTO_ICMPV6  58
#define ENF_SIGKILL      9
#define ENF_EPERM        1

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the byte swaps below assume a little-endian host"
#endif
#define enf_be16(x) __builtin_bswap16(x)
#define enf_be32(x) __builtin_bswap32(x)

/* State maps are pinned in bpffs under ENF_MAPS_DIR (the loader names a
 * directory per map layout), so that they, and the enforcement reading them,
 * outlive the daemon; a restarted daemon compiled with the same layout gets the
 * same maps back. Without ENF_MAPS_DIR (the layout test) nothing is pinned. */
#ifdef ENF_MAPS_DIR
#define ENF_STATE_TABLE(type, key, leaf, name, entries, flags) \
    BPF_TABLE_PINNED(type, key, leaf, name, entries, ENF_MAPS_DIR "/" #name, flags)
#define ENF_RINGBUF_SECTION "maps/ringbuf:" ENF_MAPS_DIR "/events"
#else
#define ENF_STATE_TABLE(type, key, leaf, name, entries, flags) BPF_F_TABLE(type, key, leaf, name, entries, flags)
#define ENF_RINGBUF_SECTION "maps/ringbuf"
#endif

ENF_STATE_TABLE("hash", u64, struct enf_sandbox, sandboxes, ENF_MAX_SANDBOXES, 0);
ENF_STATE_TABLE("array", u32, struct enf_config, config, 1, 0);
ENF_STATE_TABLE("percpu_array", u32, struct enf_counters, counters, ENF_MAX_SANDBOXES, 0);
ENF_STATE_TABLE("percpu_array", u32, struct enf_rate, rate, ENF_MAX_SANDBOXES, 0);
ENF_STATE_TABLE("percpu_array", u32, u64, globals, ENF_NUM_GLOBALS, 0);
ENF_STATE_TABLE("array", u32, struct enf_escalation, escalation, ENF_MAX_SANDBOXES, 0);

/* BPF_RINGBUF_OUTPUT, in a section that can carry a pin path. */
struct events_table_t {
    int key;
    u32 leaf;
    int (*ringbuf_output) (void *, u64, u64);
    void* (*ringbuf_reserve) (u64);
    void (*ringbuf_discard) (void *, u64);
    void (*ringbuf_submit) (void *, u64);
    u32 max_entries;
};
__attribute__((section(ENF_RINGBUF_SECTION)))
struct events_table_t events = { .max_entries = ENF_RINGBUF_PAGES * PAGE_SIZE };

/* Which loaded build's tracepoint and LSM programs act: each build's carry its
 * ENF_BUILD, and only the one named in the pinned `active` map does anything.
 * A restarted daemon attaches its programs beside the old ones, then hands
 * over with one map write: at every moment one build enforces, never none.
 * (An exec judged at the very instant of the write can be judged by both: the
 * old build's program read the map before it, the new one's after.) cgroup
 * programs do not need this: they are swapped atomically. The map's layout
 * never changes, so builds of different layouts could hand over too. */
#ifndef ENF_BUILD
#define ENF_BUILD 0
#endif
#ifdef ENF_ACTIVE_PATH
BPF_TABLE_PINNED("array", u32, u32, active, 1, ENF_ACTIVE_PATH);
#else
BPF_ARRAY(active, u32, 1);
#endif

static __always_inline int enf_active(void)
{
    int zero = 0;
    u32 *build = active.lookup(&zero);
    return build && *build == ENF_BUILD;
}
/* Never read or written: they exist so the layout test can see the event structs
 * as bcc compiled them (a ring buffer carries no type). */
BPF_ARRAY(net_event_layout, struct enf_net_event, 1);
BPF_ARRAY(exec_event_layout, struct enf_exec_event, 1);
BPF_ARRAY(device_event_layout, struct enf_device_event, 1);
BPF_ARRAY(escalation_event_layout, struct enf_escalation_event, 1);

/* The sandbox whose cgroup is the current task's cgroup or one of its ancestors.
 * Sandboxes never nest (the daemon refuses it), so the first hit is the only one. */
static __always_inline struct enf_sandbox *sandbox_of_task(void)
{
    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    u64 mask = cfg->levels_mask;
    /* A bounded loop, not unrolled: it is inlined into every program, and
     * unrolling it 63 times in each doubled the start-up compile time. */
    for (int level = 1; level <= ENF_MAX_LEVEL; level++) {
        if (!(mask >> level))
            break;
        if (!(mask & (1ULL << level)))
            continue;
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            break;
        struct enf_sandbox *sb = sandboxes.lookup(&id);
        if (sb)
            return sb;
    }
    return 0;
}

static __always_inline void count_global(int index)
{
    u64 *value = globals.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

static __always_inline void fill_head(struct enf_event_head *h, struct enf_sandbox *sb, u8 kind, u8 action)
{
    h->boot_ns = bpf_ktime_get_boot_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->generation = sb->generation;
    h->slot = sb->slot;
    u64 id = bpf_get_current_pid_tgid();
    h->tgid = id >> 32;
    h->tid = (u32)id;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
    h->kind = kind;
    h->action = action;
    h->tag = sb->tag;
}

static __always_inline void send_event(struct enf_sandbox *sb, void *ev, u32 size)
{
    if (events.ringbuf_output(ev, size, 0) == 0)
        return;
    u32 slot = sb->slot;
    struct enf_counters *c = counters.lookup(&slot);
    if (c)
        __sync_fetch_and_add(&c->lost, 1);
    count_global(ENF_GLOBAL_LOST);
}

static __always_inline u8 action_of(struct enf_sandbox *sb)
{
    return sb->mode == ENF_MODE_AUDIT ? ENF_ACTION_AUDITED : ENF_ACTION_REFUSED;
}

/* The escalation window: fires once, on the denial that makes `after` denials
 * within `within` ns. Quarantine is done here, before the next call is judged;
 * freeze and kill are done by the daemon on the event (or, if the ring buffer
 * lost it, when it polls `fired`). */
static __always_inline void escalate(struct enf_sandbox *sb, u32 slot, u8 action)
{
    u32 after = sb->escalate_after;
    if (!after || after > ENF_ESCALATE_MAX)
        return;
    struct enf_escalation *e = escalation.lookup(&slot);
    if (!e || e->fired)
        return;
    u64 index = __sync_fetch_and_add(&e->count, 1);
    u64 now = bpf_ktime_get_ns();
    e->times[index & (ENF_ESCALATE_MAX - 1)] = now;
    if (index + 1 < after)
        return;
    u64 first = e->times[(index + 1 - after) & (ENF_ESCALATE_MAX - 1)];
    if (now - first > sb->escalate_within_ns)
        return;
    if (__sync_val_compare_and_swap(&e->fired, 0, index + 1) != 0)
        return;  /* another CPU fired it */
    u8 acted = action == ENF_ACTION_REFUSED;
    if (acted && sb->escalate_action == ENF_ESCALATE_QUARANTINE)
        e->quarantined = 1;
    struct enf_escalation_event ev = {};
    fill_head(&ev.head, sb, ENF_KIND_ESCALATION, action);
    ev.count = index + 1;
    ev.within_ns = sb->escalate_within_ns;
    ev.after = after;
    ev.escalate_action = sb->escalate_action;
    ev.acted = acted;
    send_event(sb, &ev, sizeof(ev));
}

/* Only sandboxes with an escalation pay for the lookup. */
static __always_inline int quarantined(struct enf_sandbox *sb)
{
    if (!sb->escalate_after)
        return 0;
    u32 slot = sb->slot;
    struct enf_escalation *e = escalation.lookup(&slot);
    return e && e->quarantined;
}

/* Count exactly; 1 if the denial is also to be reported, 0 if it is over the
 * per-sandbox event budget. The verdict never depends on this: callers decide
 * before calling it. */
static __always_inline int count_denial(struct enf_sandbox *sb, u8 kind, u8 action)
{
    u32 slot = sb->slot;
    struct enf_counters *c = counters.lookup(&slot);
    if (!c)
        return 0;
    u32 k = kind & (ENF_NUM_KINDS - 1);
    if (action == ENF_ACTION_REFUSED)
        __sync_fetch_and_add(&c->refused[k], 1);
    else
        __sync_fetch_and_add(&c->audited[k], 1);
    escalate(sb, slot, action);

    int zero = 0;
    struct enf_config *cfg = config.lookup(&zero);
    struct enf_rate *r = rate.lookup(&slot);
    if (cfg && r && cfg->events_per_sec) {
        u64 now = bpf_ktime_get_ns();
        if (now - r->window_start_ns >= 1000000000ULL) {
            r->window_start_ns = now;
            r->count = 0;
        }
        if (r->count >= cfg->events_per_sec) {
            __sync_fetch_and_add(&c->suppressed, 1);
            return 0;
        }
        r->count++;
    }
    return 1;
}
