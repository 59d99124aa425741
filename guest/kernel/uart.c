/* uart.c - the console: a 16550 UART on COM1 (0x3F8, IRQ4).
 * Output is polled; input arrives by interrupt into a small ring buffer (console.c reads it). */
#include "kernel.h"
#include "pv.h"

#define COM1 0x3F8
#define UART_THR 0
#define UART_RBR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20

static int uart_present;
static char inbuf[256];
static volatile u32 in_r, in_w;

void uart_init(void)
{
    outb(COM1 + UART_IER, 0x00);
    outb(COM1 + UART_LCR, 0x80);      /* DLAB */
    outb(COM1 + 0, 1);                /* 115200 baud */
    outb(COM1 + 1, 0);
    outb(COM1 + UART_LCR, 0x03);      /* 8N1 */
    outb(COM1 + UART_FCR, 0x07);      /* FIFO on, cleared */
    outb(COM1 + UART_MCR, 0x0B);      /* DTR, RTS, OUT2 (IRQ line enabled) */
    uart_present = inb(COM1 + UART_LSR) != 0xFF;
}

/* Enable the receive interrupt, once the PIC is set up: a 16550 raises it at once when bytes
 * are already waiting (typed or piped before boot), and an interrupt raised before pic_init
 * would be lost in the PIC's reset. */
void uart_irq_on(void)
{
    if (uart_present)
        outb(COM1 + UART_IER, 0x01);  /* interrupt on received data */
}

void uart_putc(int c)
{
    if (!uart_present)
        return;
    for (int i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        ;
    outb(COM1 + UART_THR, (u8)c);
}

void console_write(const char *s, size_t n)
{
    u32 fl = irq_save();
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            uart_putc('\r');
        uart_putc(s[i]);
    }
    restore_fl(fl);
}

/* IRQ4: move every waiting byte into the ring buffer */
void uart_intr(void)
{
    while (uart_present && (inb(COM1 + UART_LSR) & LSR_DR)) {
        char c = inb(COM1 + UART_RBR);
        if (in_w - in_r < sizeof inbuf)
            inbuf[in_w++ % sizeof inbuf] = c;
    }
}

int uart_getc(void)
{
    if (in_r == in_w)
        return -1;
    return (u8)inbuf[in_r++ % sizeof inbuf];
}
