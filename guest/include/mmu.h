/* mmu.h - x86 segmentation and paging definitions. */
#ifndef MMU_H
#define MMU_H

/* GDT slots.  Kernel descriptors get DPL = kernel_ring, kernel selectors RPL = kernel_ring. */
#define GDT_NULL  0
#define GDT_KCODE 1
#define GDT_KDATA 2
#define GDT_UCODE 3
#define GDT_UDATA 4
#define GDT_TSS   5
#define NGDT      6

#define SEL_KCODE(ring) ((GDT_KCODE << 3) | (ring))
#define SEL_KDATA(ring) ((GDT_KDATA << 3) | (ring))
#define SEL_UCODE ((GDT_UCODE << 3) | 3)
#define SEL_UDATA ((GDT_UDATA << 3) | 3)
#define SEL_TSS   (GDT_TSS << 3)

/* page table entry bits */
#define PTE_P   0x001
#define PTE_W   0x002
#define PTE_U   0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PTE_A   0x020
#define PTE_D   0x040
#define PTE_PS  0x080
#define PTE_G   0x100
#define PTE_COW 0x200   /* software bit: copy-on-write */
#define PTE_ADDR(e) ((e) & ~0xFFFu)

#define PDX(va) (((u32)(va) >> 22) & 0x3FF)
#define PTX(va) (((u32)(va) >> 12) & 0x3FF)
#define NPDENTRIES 1024
#define NPTENTRIES 1024
#define KERN_PDX (KERNBASE >> 22)      /* 768: first kernel PDE */

#define CR0_PE 0x00000001
#define CR0_WP 0x00010000
#define CR0_PG 0x80000000

#define FL_IF 0x00000200
#define FL_IOPL_MASK 0x00003000

#define T_PGFLT 14
#define T_IRQ0 32
#define T_SYSCALL 0x80
#define IRQ_TIMER 0
#define IRQ_COM1 4

#ifndef __ASSEMBLER__
struct tss {
    u32 link;
    u32 esp0, ss0;
    u32 esp1, ss1;
    u32 esp2, ss2;
    u32 cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u32 es, cs, ss, ds, fs, gs, ldt;
    u16 trap, iomap_base;
} PACKED;

/* what trapasm.S pushes; the layout is shared with trapasm.S */
struct trapframe {
    u32 edi, esi, ebp, oesp, ebx, edx, ecx, eax;   /* pushal */
    u32 gs, fs, es, ds;
    u32 trapno, err;
    u32 eip, cs, eflags;
    u32 esp, ss;                                    /* only when coming from ring 3 */
};
#endif
#endif
