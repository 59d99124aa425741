/* multiboot.h - Multiboot v1 (the parts this kernel uses). */
#ifndef MULTIBOOT_H
#define MULTIBOOT_H

#define MB_HEADER_MAGIC 0x1BADB002
#define MB_HEADER_FLAGS 0x00000003      /* page-align modules, want memory info */
#define MB_BOOT_MAGIC   0x2BADB002

#define MBI_MEM     0x001
#define MBI_CMDLINE 0x004
#define MBI_MODS    0x008

#ifndef __ASSEMBLER__
struct mb_info {
    u32 flags;
    u32 mem_lower, mem_upper;
    u32 boot_device;
    u32 cmdline;
    u32 mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr;
} PACKED;

struct mb_module {
    u32 start, end;
    u32 string;
    u32 reserved;
} PACKED;

struct boot_module { u32 start, end; };   /* physical, kept by main.c for the initrd */
extern struct boot_module initrd_module;
#endif
#endif
