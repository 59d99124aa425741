/* pic.c - the 8259A pair, remapped to vectors 32-47.  I/O delays go through the VMI IODelay call. */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"

#define PIC1 0x20
#define PIC2 0xA0

static u16 irq_mask = 0xFFFF & ~(1 << 2);     /* everything masked but the cascade */

static void pic_out(u16 port, u8 v)
{
    outb(port, v);
    vmi_ops.io_delay();
}

static void pic_setmask(void)
{
    outb(PIC1 + 1, irq_mask & 0xFF);
    outb(PIC2 + 1, irq_mask >> 8);
}

void pic_init(void)
{
    pic_out(PIC1, 0x11);            /* ICW1: edge, cascade, ICW4 */
    pic_out(PIC2, 0x11);
    pic_out(PIC1 + 1, T_IRQ0);      /* ICW2: vector base */
    pic_out(PIC2 + 1, T_IRQ0 + 8);
    pic_out(PIC1 + 1, 1 << 2);      /* ICW3: slave on IRQ2 */
    pic_out(PIC2 + 1, 2);
    pic_out(PIC1 + 1, 0x01);        /* ICW4: 8086 mode */
    pic_out(PIC2 + 1, 0x01);
    pic_setmask();
}

void pic_enable(int irq)
{
    irq_mask &= ~(1 << irq);
    pic_setmask();
}

void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2, 0x20);
    outb(PIC1, 0x20);
}

/* IRQ7/IRQ15 with nothing in service: spurious, no EOI for the master */
int pic_spurious(int irq)
{
    if (irq != 7 && irq != 15)
        return 0;
    outb(irq == 7 ? PIC1 : PIC2, 0x0B);    /* read ISR */
    u8 isr = inb(irq == 7 ? PIC1 : PIC2);
    if (isr & 0x80)
        return 0;
    if (irq == 15)
        outb(PIC1, 0x20);
    return 1;
}
