/* vm.h - address spaces. */
#ifndef VM_H
#define VM_H
#include "kernel.h"

extern u32 *kpgdir;           /* the kernel's page directory (direct map only) */
extern u32 *cur_pgdir;        /* the page directory in CR3 */
extern u32 phys_end;          /* end of the direct-mapped physical memory */

u32 vm_map_limit(u32 ram_end);
void vm_init(u32 end);
void set_entry(u32 *pgdir, u32 *entry, u32 val, u32 level, u32 va);
u32 *pgdir_walk(u32 *pgdir, u32 va, int alloc);
int map_page(u32 *pgdir, u32 va, u32 pa, u32 perm);
u32 *pgdir_new(void);                  /* a fresh address space sharing the kernel half */
void pgdir_free(u32 *pgdir);           /* drops user pages (refcounted) and the tables */
void switch_pgdir(u32 *pgdir);
void flush_user_tlb(void);
int vm_bigpage_check(void);            /* the 4 MiB-page self-check of vmcheck() */
#endif
