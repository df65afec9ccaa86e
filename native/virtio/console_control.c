/* virtio-console's multiport control protocol: see console.h and console_internal.h. */
#include "console_internal.h"

#include <string.h>

enum {
    CONTROL_RX = 2, /* multiport's control queues */
    CONTROL_TX = 3,
    CONTROL_HEADER = 8, /* struct virtio_console_control: le32 id, le16 event, le16 value */
};

static void put16(uint8_t *at, uint16_t v)
{
    at[0] = (uint8_t)v;
    at[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *at, uint32_t v)
{
    put16(at, (uint16_t)v);
    put16(at + 2, (uint16_t)(v >> 16));
}

static uint32_t get16(const uint8_t *at)
{
    return (uint32_t)at[0] | (uint32_t)at[1] << 8;
}

/* ---- the control queues (multiport) ------------------------------------------------ */

static uint32_t gather(const struct vmrun_virtq_chain *chain, uint8_t *out, uint32_t want)
{
    uint32_t got = 0;
    for (uint32_t i = 0; i < chain->readable && got < want; i++) {
        uint32_t n = chain->iov[i].len < want - got ? chain->iov[i].len : want - got;
        memcpy(out + got, chain->iov[i].base, n);
        got += n;
    }
    return got;
}

static uint32_t scatter(const struct vmrun_virtq_chain *chain, const uint8_t *in, uint32_t len)
{
    uint32_t put = 0;
    for (uint32_t i = chain->readable; i < chain->readable + chain->writable && put < len; i++) {
        uint32_t n = chain->iov[i].len < len - put ? chain->iov[i].len : len - put;
        memcpy(chain->iov[i].base, in + put, n);
        put += n;
    }
    return put;
}

/* A message from the guest: anything, any number of times; it only sets flags. */
static void handle(struct vmrun_console *c, uint32_t id, uint32_t event, uint32_t value)
{
    if (event == VMRUN_CONSOLE_DEVICE_READY) {
        for (uint32_t i = 0; value && i < c->port_count; i++)
            __atomic_fetch_or(&c->ports[i].pending, SEND_ADD, __ATOMIC_SEQ_CST);
        return;
    }
    if (id >= c->port_count)
        return;
    struct port *p = &c->ports[id];
    if (event == VMRUN_CONSOLE_PORT_READY && value) {
        p->ready = 1;
        uint32_t flags = SEND_OPEN | (p->console ? SEND_CONSOLE | SEND_RESIZE : 0) |
                         (p->name_len ? SEND_NAME : 0);
        __atomic_fetch_or(&p->pending, flags, __ATOMIC_SEQ_CST);
    } else if (event == VMRUN_CONSOLE_PORT_OPEN) {
        p->guest_open = value != 0;
    }
}

/* Read the guest's control messages. -1 when the guest broke the queue. */
int vmrun_console_control_in(struct vmrun_console *c)
{
    struct vmrun_virtq *q = c->q[CONTROL_TX];
    struct vmrun_virtq_chain chain = {.capacity = VMRUN_CONSOLE_SEGMENTS, .iov = c->scratch};
    do {
        vmrun_virtq_notify(q, 0);
        int got;
        while ((got = vmrun_virtq_pop(q, &chain, VMRUN_VIRTQ_READABLE)) > 0) {
            uint8_t msg[CONTROL_HEADER];
            if (gather(&chain, msg, sizeof msg) == sizeof msg) /* a shorter one says nothing */
                handle(c, get16(msg) | get16(msg + 2) << 16, get16(msg + 4), get16(msg + 6));
            if (vmrun_console_give_back(c, CONTROL_TX, chain.head, 0) < 0)
                return -1;
        }
        if (got < 0)
            return -1;
    } while (vmrun_virtq_notify(q, 1));
    return 0;
}

/* The first message to send about the port, the ones that no longer apply dropped. */
static uint32_t next_message(struct port *p)
{
    for (;;) {
        uint32_t pending = __atomic_load_n(&p->pending, __ATOMIC_SEQ_CST);
        uint32_t flag = pending & -pending;
        if (!flag)
            return 0;
        int sized = (__atomic_load_n(&p->size, __ATOMIC_SEQ_CST) & HAS_SIZE) != 0;
        /* All but DEVICE_ADD wait for PORT_READY, which asks for them again. Linux resizes
         * only console ports. */
        if ((flag == SEND_ADD || p->ready) && (flag != SEND_RESIZE || (p->console && sized)))
            return flag;
        __atomic_fetch_and(&p->pending, ~flag, __ATOMIC_SEQ_CST);
    }
}

static uint32_t message(const struct port *p, uint32_t id, uint32_t flag, uint8_t *msg)
{
    uint32_t event = VMRUN_CONSOLE_PORT_OPEN, value = 1, len = CONTROL_HEADER;
    if (flag == SEND_ADD) {
        event = VMRUN_CONSOLE_DEVICE_ADD;
    } else if (flag == SEND_CONSOLE) {
        event = VMRUN_CONSOLE_CONSOLE_PORT;
    } else if (flag == SEND_NAME) {
        event = VMRUN_CONSOLE_PORT_NAME;
        memcpy(msg + len, p->name, p->name_len); /* Linux adds the NUL itself */
        len += p->name_len;
    } else if (flag == SEND_RESIZE) {
        /* virtio 1.2 (5.3.6.2) says { le16 cols; le16 rows; }. Linux read rows first until
         * commit 5326ab737a47, which stable 6.1.y and 6.12.y took in January 2026; Debian's
         * 6.1.0-57 cloud kernel (6.1.192), the default guest, reads cols first (checked in
         * its virtio_console.ko). So the spec's order, as libkrun's: only an older guest
         * sees its size transposed. */
        uint64_t size = __atomic_load_n(&p->size, __ATOMIC_SEQ_CST);
        event = VMRUN_CONSOLE_RESIZE;
        value = 0;
        put16(msg + len, (uint16_t)size);             /* cols */
        put16(msg + len + 2, (uint16_t)(size >> 16)); /* rows */
        len += 4;
    } else {
        value = p->host_open;
    }
    put32(msg, id);
    put16(msg + 4, (uint16_t)event);
    put16(msg + 6, (uint16_t)value);
    return len;
}

/* Send what each port has pending, as long as the guest gives buffers. -1 when it broke
 * the queue. */
int vmrun_console_control_out(struct vmrun_console *c)
{
    struct vmrun_virtq *q = c->q[CONTROL_RX];
    struct vmrun_virtq_chain chain = {.capacity = VMRUN_CONSOLE_SEGMENTS, .iov = c->scratch};
    for (uint32_t i = 0; i < c->port_count; i++) {
        struct port *p = &c->ports[i];
        uint32_t flag;
        while ((flag = next_message(p))) {
            int got = vmrun_virtq_pop(q, &chain, VMRUN_VIRTQ_WRITABLE);
            if (got < 0)
                return -1;
            if (got == 0) {
                if (vmrun_virtq_notify(q, 1))
                    continue;
                return 0; /* the guest's next buffers notify */
            }
            /* Cleared before the message is made: a resize meanwhile sends again. */
            __atomic_fetch_and(&p->pending, ~flag, __ATOMIC_SEQ_CST);
            uint8_t msg[CONTROL_HEADER + VMRUN_CONSOLE_NAME_MAX];
            uint32_t len = message(p, i, flag, msg);
            uint32_t written = scatter(&chain, msg, len);
            if (vmrun_console_give_back(c, CONTROL_RX, chain.head, written) < 0)
                return -1;
        }
    }
    return 0;
}
