/* Issue 10's isolation guest (tests/test_mmu_isolation.py, docs/mmu.md "Isolation tests").

   Command line: 8 hex digits (a per-run nonce, bit 31 set) then a space and one mode letter:
     s  the scan: tag every frame the memory map gives the guest with its own guest-physical
        address (dword at gpa = gpa ^ nonce), map EVERY frame number of RAM through ten aliases
        (4 KiB pages in order and reversed, 4 MiB pages; supervisor and user; read-write and
        read-only), read every dword through every mapping the ring may use - from the kernel's
        ring, then from ring 3 - write through every writable one and check the write through the
        identity view, and probe (one frame in 64) that a mapping the ring may not use faults with
        the right error code and CR2.  Frames it does not tag (its own image and tables, the
        option-ROM hole) must read through every alias exactly as through the identity map.
     b / B / f  a 4 KiB page just beyond RAM (read), a 4 MiB page beyond RAM (write), the frame
        0xFFFFF (the VMM's fence page on the direct model: read, then write): a clean fate
     r  a self-referencing page directory (PD[1023] = PD) used as a page table and written through:
        the recursive windows show the directory and the tables, PDEs and PTEs written through
        them take effect after invlpg / a CR3 load, 2,000 rounds flip PD[1022] between the
        directory and a table, then the self-map removes itself (the next use faults)
     m  one frame mapped over a million times (every PDE but the first -> one table whose 1,024
        entries all name that frame), each page read and written: a counter incremented through a
        different linear page each time
     t  4 directories x 1,023 distinct tables, every entry of each naming one frame, four PDE
        access classes: more shadow tables than the shadow pool holds (eviction), walked twice
     o / O / c  page tables in the option-ROM range: a page table at 0xC0000 walked (each of its
        1,024 pages read, faults recovered), a store into that table, CR3 = 0xC0000
     n  nothing: paging on, report (the baseline of the host-memory checks)
   It reports counts as one VMIROM-JSON line ("isoscan") and exits through port 0xf4 with 0 when
   every check held, 1 when one did not, 2 when a hostile mode came back where it should not. */
#include "user_common.inc"

        .set SLOT_SHIFT, 26             /* alias windows: 64 MiB of linear space (16 PDEs) each */
        .set PDES_PER_SLOT, 16
        .set MAX_RAM, 0x04000000
        .set LOW_END, 0x9F000           /* conventional memory of the memory map (below the EBDA) */
        .set HOLE_END, 0x100000         /* [LOW_END, HOLE_END): EBDA, VGA, option ROMs: reserved */
        .set ROM_BASE, 0xC0000
        .set WMARK, 0x3c5a5a5a          /* xored into a tag by the write test (bit 31 kept) */
        .set PS, 0x80
        .set SR, 1                      /* alias access: supervisor reads */
        .set SW, 2                      /* supervisor writes */
        .set UR, 4                      /* user reads */
        .set UW, 8                      /* user writes */
        .set UF, 16                     /* a user read must fault: #PF, P|U */
        .set SWF, 32                    /* a supervisor write must fault (CR0.WP): #PF, P|W */
        .set UWF, 64                    /* a user write must fault: #PF, P|W|U */
        .set FWD, 0                     /* alias kinds: page tables in frame order */
        .set REV, 1                     /* page tables in reverse frame order */
        .set BIG, 2                     /* 4 MiB pages (CR4.PSE) */
        .set SPACES, 4                  /* mode t: directories */
        .set NOCHECK, 0xffffffff        /* probe_err: any #PF is fine */

        .data
        .align 4
/* the scan's aliases: slot (linear base = slot << 26), kind, PDE flags, access */
aliases:
        .long 0, FWD, 7, SR|SW|UR|UW    /* the identity map: the reference view of every frame */
        .long 1, FWD, 3, SR|SW|UF
        .long 2, REV, 3, SR|SW|UF
        .long 3, BIG, 3, SR|SW|UF
        .long 4, FWD, 1, SR|SWF|UF
        .long 5, REV, 7, SR|SW|UR|UW
        .long 6, BIG, 7, SR|SW|UR|UW
        .long 7, FWD, 5, SR|SWF|UR|UWF
        .long 8, BIG, 5, SR|SWF|UR|UWF
        .long 9, BIG, 1, SR|SWF|UF
aliases_end:
user_next: .long user_first
nonce:  .long 0
mode:   .long 0
ram_size: .long 0
nframes: .long 0
npde:   .long 0
pd:     .long 0
pt_fwd: .long 0
pt_rev: .long 0
spare:  .long 0                         /* a spare page table */
frame_x: .long 0                        /* a spare data frame */
tables_end_gfn: .long 0
kstate: .long 0
in_user: .long 0
cur_alias: .long 0
cur_f:  .long 0
cur_dir: .long 0
a_read: .long 0
a_write: .long 0
a_rfault: .long 0
a_wfault: .long 0
probe_on: .long 0
probe_va: .long 0
probe_err: .long 0
k_esp:  .long 0
k_resume: .long 0
u_esp:  .long 0
u_resume: .long 0
/* the report, in this order */
counters:
c_ram_frames: .long 0
c_tagged: .long 0
c_mappings: .long 0
c_dwords: .long 0
c_bad:  .long 0
c_writes: .long 0
c_bad_writes: .long 0
c_probes: .long 0
c_faults: .long 0
c_bad_faults: .long 0
c_nofault: .long 0
c_unexpected_vector: .long -1
c_unexpected_eip: .long 0
c_value: .long 0
counters_end:
names:  .ascii "VMIROM-JSON {\"event\":\"isoscan\",\"mode\":\""
mode_char: .ascii "?\""
        .asciz ",\"ram_frames\":"
        .asciz ",\"tagged\":"
        .asciz ",\"mappings\":"
        .asciz ",\"dwords\":"
        .asciz ",\"bad\":"
        .asciz ",\"writes\":"
        .asciz ",\"bad_writes\":"
        .asciz ",\"probes\":"
        .asciz ",\"faults\":"
        .asciz ",\"bad_faults\":"
        .asciz ",\"nofault\":"
        .asciz ",\"unexpected_vector\":"
        .asciz ",\"unexpected_eip\":"
        .asciz ",\"value\":"
        .asciz "}\n"

        .text
        .globl _start
_start:                                 /* %ebx: the Multiboot information */
        cld
        mov 8(%ebx), %eax               /* mem_upper: KiB above 1 MiB */
        shl $10, %eax
        add $0x100000, %eax
        mov %eax, ram_size
        mov 16(%ebx), %esi              /* the command line */
        xor %edx, %edx
        mov $8, %ecx
1:      lodsb
        movzbl %al, %eax
        or $0x20, %eax                  /* lower case (digits keep their value) */
        sub $0x30, %eax
        cmp $10, %eax
        jb 2f
        sub $0x27, %eax                 /* 'a' - '0' - 10 */
2:      shl $4, %edx
        or %eax, %edx
        loop 1b
        mov %edx, nonce
        lodsb                           /* the space */
        lodsb
        movzbl %al, %eax
        mov %eax, mode
        mov %al, mode_char
        jmp setup_and_enter_user        /* -> user_main at ring 3 -> int $0x30 -> kernel_entry */

/* ---- ring 3 ---------------------------------------------------------------------------------- */
user_main:
        mov $0x23, %eax
        mov %eax, %ds
        mov %eax, %es
        jmp *user_next
user_first:
        int $0x30
user_scan:
        movl $1, in_user
        call scan_all
        int $0x30

/* ---- traps ------------------------------------------------------------------------------------- */
on_trap:
        mov trap_vector, %eax
        cmp $0x30, %eax
        je kernel_entry
        cmp $14, %eax
        jne unexpected
        cmpl $0, probe_on
        je unexpected
        movl $0, probe_on               /* a probe's #PF: the error code and CR2 the guest expects? */
        incl c_faults
        mov 4(%esp), %edx
        mov %cr2, %ecx
        cmpl $NOCHECK, probe_err
        je 2f
        cmp probe_err, %edx
        jne 1f
        cmp probe_va, %ecx
        je 2f
1:      incl c_bad_faults
2:      mov trap_cs, %eax
        and $3, %eax
        cmp $3, %eax
        je 3f
        mov k_esp, %esp                 /* back into the kernel's probe */
        jmp *k_resume
3:      pushl $0x23                     /* back into the user's probe */
        pushl u_esp
        pushl $2
        pushl $0x1b
        pushl u_resume
        iret
unexpected:
        call kernel_segments
        mov trap_vector, %eax
        mov %eax, c_unexpected_vector
        mov trap_eip, %eax
        mov %eax, c_unexpected_eip
        call report
        mov $99, %eax
        jmp exit_with

kernel_segments:
        mov kring, %eax
        or $0x10, %eax
        mov %eax, %ds
        mov %eax, %es
        ret

kernel_entry:                           /* int $0x30 from ring 3 */
        call kernel_segments
        mov $kstack_top, %esp
        mov kstate, %eax
        incl kstate
        test %eax, %eax
        jnz after_user
        mov ram_size, %eax              /* 4 MiB multiples up to MAX_RAM */
        test $0x3fffff, %eax
        jnz bad_ram
        cmp $MAX_RAM, %eax
        ja bad_ram
        shr $12, %eax
        mov %eax, nframes
        mov %eax, c_ram_frames
        shr $10, %eax
        mov %eax, npde
        call build_base
        mov mode, %eax
        cmp $0x73, %eax                 /* s */
        je mode_scan
        call paging_on
        mov mode, %eax
        cmp $0x62, %eax                 /* b */
        je mode_beyond_4k
        cmp $0x42, %eax                 /* B */
        je mode_beyond_4m
        cmp $0x66, %eax                 /* f */
        je mode_fence
        cmp $0x72, %eax                 /* r */
        je mode_selfref
        cmp $0x6d, %eax                 /* m */
        je mode_million
        cmp $0x74, %eax                 /* t */
        je mode_tables
        cmp $0x6f, %eax                 /* o */
        je mode_rom_table
        cmp $0x4f, %eax                 /* O */
        je mode_rom_store
        cmp $0x63, %eax                 /* c */
        je mode_rom_cr3
        jmp finish                      /* n, anything else */
bad_ram:
        mov $90, %eax
        jmp exit_with

/* exit 0 when every check held */
finish:
        call report
        xor %eax, %eax
        mov c_bad, %ecx
        or c_bad_writes, %ecx
        or c_bad_faults, %ecx
        or c_nofault, %ecx
        mov c_probes, %edx
        cmp c_faults, %edx
        je 1f
        inc %ecx
1:      test %ecx, %ecx
        jz 2f
        mov $1, %eax
2:      jmp exit_with
came_back:                              /* a hostile mode whose access should have ended the run */
        call report
        mov $2, %eax
        jmp exit_with

/* ---- tables ------------------------------------------------------------------------------------ */
/* right after the image: the directory, the identity tables (frame order), the reversed tables, a
   spare table and a spare frame; the directory maps slot 0 (the identity, user read-write) */
build_base:
        mov $image_end, %eax
        mov %eax, pd
        add $4096, %eax
        mov %eax, pt_fwd
        mov npde, %ecx
        shl $12, %ecx
        add %ecx, %eax
        mov %eax, pt_rev
        add %ecx, %eax
        mov %eax, spare
        add $4096, %eax
        mov %eax, frame_x
        add $4096, %eax
        mov %eax, %ecx
        shr $12, %eax
        mov %eax, tables_end_gfn
        mov pd, %edi                    /* zero all of it */
        sub %edi, %ecx
        shr $2, %ecx
        xor %eax, %eax
        rep stosl
        mov pt_fwd, %edi                /* PT_fwd[i] = frame i, PT_rev[i] = frame n-1-i: P|RW|U */
        mov pt_rev, %esi
        mov nframes, %ecx
        xor %ebx, %ebx
1:      mov %ebx, %eax
        shl $12, %eax
        or $7, %eax
        mov %eax, (%edi, %ebx, 4)
        mov %ecx, %eax
        dec %eax
        shl $12, %eax
        or $7, %eax
        mov %eax, (%esi, %ebx, 4)
        inc %ebx
        dec %ecx
        jnz 1b
        mov $aliases, %ebp              /* slot 0 */
        call map_alias
        ret

/* the alias at %ebp into the directory */
map_alias:
        mov (%ebp), %edi
        imul $PDES_PER_SLOT * 4, %edi
        add pd, %edi                    /* &PD[slot * 16] */
        xor %ecx, %ecx
1:      cmp npde, %ecx
        jae 9f
        mov 4(%ebp), %edx
        cmp $BIG, %edx
        jne 2f
        mov %ecx, %eax
        shl $22, %eax
        or $PS, %eax
        jmp 3f
2:      mov pt_fwd, %eax
        cmp $REV, %edx
        jne 4f
        mov pt_rev, %eax
4:      mov %ecx, %ebx
        shl $12, %ebx
        add %ebx, %eax
3:      or 8(%ebp), %eax
        mov %eax, (%edi, %ecx, 4)
        inc %ecx
        jmp 1b
9:      ret

paging_on:
        mov %cr4, %eax
        or $0x10, %eax                  /* PSE */
        mov %eax, %cr4
        mov pd, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80010000, %eax            /* PG | WP */
        mov %eax, %cr0
        ret

reload_cr3:
        mov %cr3, %eax
        mov %eax, %cr3
        ret

/* %eax = 1 when guest frame %ebx is one the guest tags (memory-map RAM outside its image and tables) */
is_tagged:
        xor %eax, %eax
        cmp $(LOW_END >> 12), %ebx
        jb 1f
        cmp $(HOLE_END >> 12), %ebx
        jb 2f
        cmp tables_end_gfn, %ebx
        jb 2f
        cmp nframes, %ebx
        jae 2f
1:      inc %eax
2:      ret

/* every tagged frame: the dword at guest-physical p holds p ^ nonce (written through the identity) */
tag_all:
        xor %ebx, %ebx
1:      cmp nframes, %ebx
        jae 9f
        call is_tagged
        test %eax, %eax
        jz 3f
        incl c_tagged
        mov %ebx, %edi
        shl $12, %edi
        mov nonce, %edx
        mov $1024, %ecx
2:      mov %edi, %eax
        xor %edx, %eax
        stosl
        dec %ecx
        jnz 2b
3:      inc %ebx
        jmp 1b
9:      ret

/* ---- the scan ---------------------------------------------------------------------------------- */
mode_scan:
        mov $aliases + 16, %ebp
1:      call map_alias
        add $16, %ebp
        cmp $aliases_end, %ebp
        jb 1b
        call paging_on
        call tag_all
        movl $0, in_user
        call scan_all
        movl $user_scan, user_next
        jmp enter_user                  /* the same scan from ring 3, back through int $0x30 */
after_user:
        jmp finish

scan_all:
        mov $aliases, %ebp
1:      mov %ebp, cur_alias
        call scan_alias
        mov cur_alias, %ebp
        add $16, %ebp
        cmp $aliases_end, %ebp
        jb 1b
        ret

/* one alias (cur_alias), every frame number of RAM, from the ring `in_user` says */
scan_alias:
        mov cur_alias, %ebp
        mov 12(%ebp), %eax
        cmpl $0, in_user
        jne 1f
        mov %eax, %edx                  /* the kernel's ring */
        and $SR, %edx
        mov %edx, a_read
        mov %eax, %edx
        and $SW, %edx
        mov %edx, a_write
        movl $0, a_rfault
        and $SWF, %eax
        mov %eax, a_wfault
        jmp 2f
1:      mov %eax, %edx                  /* ring 3 */
        and $UR, %edx
        mov %edx, a_read
        mov %eax, %edx
        and $UW, %edx
        mov %edx, a_write
        mov %eax, %edx
        and $UF, %edx
        mov %edx, a_rfault
        and $UWF, %eax
        mov %eax, a_wfault
2:      movl $0, cur_f
3:      mov cur_f, %eax
        cmp nframes, %eax
        jae 9f
        call frame_of                   /* %esi = linear address, %ebx = the frame it names */
        cmpl $0, a_read
        je 4f
        call check_frame
4:      call frame_of
        cmpl $0, a_write
        je 5f
        call write_check
5:      testl $63, cur_f
        jnz 8f
        call frame_of
        cmpl $0, a_rfault
        je 6f
        mov $5, %eax                    /* present, user, read */
        call probe_read
6:      call frame_of
        cmpl $0, a_wfault
        je 8f
        call is_tagged                  /* a store that wrongly succeeds must change nothing */
        test %eax, %eax
        jz 8f
        mov $3, %eax                    /* present, write (+ user) */
        cmpl $0, in_user
        je 7f
        mov $7, %eax
7:      call probe_write
8:      incl cur_f
        jmp 3b
9:      ret

/* %esi = the linear address of frame number cur_f in the current alias, %ebx = its guest frame */
frame_of:
        mov cur_alias, %ebp
        mov cur_f, %ebx
        mov (%ebp), %esi
        shl $SLOT_SHIFT, %esi
        mov %ebx, %eax
        shl $12, %eax
        add %eax, %esi
        cmpl $REV, 4(%ebp)
        jne 1f
        mov nframes, %eax
        dec %eax
        sub %ebx, %eax
        mov %eax, %ebx
1:      ret

/* read the 1,024 dwords at %esi (a mapping of guest frame %ebx): a tagged frame must hold its tags,
   any other frame exactly what its identity view holds */
check_frame:
        incl c_mappings
        addl $1024, c_dwords
        call is_tagged
        test %eax, %eax
        jz 5f
        mov %ebx, %edx
        shl $12, %edx
        mov nonce, %edi
        mov $1024, %ecx
1:      mov %edx, %eax
        xor %edi, %eax
        cmp (%esi), %eax
        jne 3f
2:      add $4, %esi
        add $4, %edx
        dec %ecx
        jnz 1b
        ret
3:      incl c_bad
        jmp 2b
5:      mov %ebx, %edi
        shl $12, %edi
        mov $1024, %ecx
        repe cmpsl
        je 6f
        incl c_bad
6:      ret

/* write through %esi (a mapping of tagged frame %ebx) at a dword that depends on the frame and the
   alias, check it through the identity view, put the tag back and check again */
write_check:
        call is_tagged
        test %eax, %eax
        jz 9f
        mov cur_f, %eax
        imul $7, %eax
        mov cur_alias, %ebp
        add (%ebp), %eax
        and $1023, %eax
        shl $2, %eax
        lea (%esi, %eax), %edi          /* through the alias */
        mov %ebx, %edx
        shl $12, %edx
        add %eax, %edx                  /* through the identity */
        mov %edx, %eax
        xor nonce, %eax                 /* the tag */
        mov %eax, %ecx
        xor $WMARK, %ecx
        mov %ecx, (%edi)
        cmp %ecx, (%edx)
        je 1f
        incl c_bad_writes
1:      mov %eax, (%edi)
        cmp %eax, (%edx)
        je 2f
        incl c_bad_writes
2:      incl c_writes
9:      ret

/* %esi: an address whose read (probe_read) / write (probe_write) must fault with error code %eax */
probe_read:
        call probe_arm
        movl $1f, k_resume
        movl $1f, u_resume
        mov (%esi), %eax
        movl $0, probe_on
        incl c_nofault
1:      ret
probe_write:
        call probe_arm
        movl $1f, k_resume
        movl $1f, u_resume
        mov %ebx, %eax                  /* the frame's first tag: a wrong success changes nothing */
        shl $12, %eax
        xor nonce, %eax
        mov %eax, (%esi)
        movl $0, probe_on
        incl c_nofault
1:      ret
probe_arm:                              /* the caller's %esp is what the fault handler resumes on */
        mov %eax, probe_err
        mov %esi, probe_va
        lea 4(%esp), %eax
        mov %eax, k_esp
        mov %eax, u_esp
        incl c_probes
        movl $1, probe_on
        ret

/* ---- beyond RAM -------------------------------------------------------------------------------- */
mode_beyond_4k:                         /* slot 10 -> the spare table, whose entry 0 names the first frame past RAM */
        call map_spare
        mov ram_size, %eax
        or $3, %eax
        mov spare, %edi
        mov %eax, (%edi)
        call reload_cr3
        mov (10 << SLOT_SHIFT), %eax
        jmp came_back
mode_beyond_4m:                         /* slot 11: a 4 MiB page past RAM, written */
        mov ram_size, %eax
        or $(PS | 3), %eax
        mov pd, %edi
        mov %eax, 11 * PDES_PER_SLOT * 4(%edi)
        call reload_cr3
        movl $1, (11 << SLOT_SHIFT)
        jmp came_back
mode_fence:                             /* frame 0xFFFFF: read (zeros on the direct model), then write */
        call map_spare
        mov spare, %edi
        movl $0xFFFFF003, 4(%edi)
        call reload_cr3
        mov (10 << SLOT_SHIFT) + 4096, %eax
        mov %eax, c_value
        movl $1, (10 << SLOT_SHIFT) + 4096
        jmp came_back
map_spare:
        mov spare, %eax
        or $3, %eax
        mov pd, %edi
        mov %eax, 10 * PDES_PER_SLOT * 4(%edi)
        ret

/* ---- a self-referencing directory -------------------------------------------------------------- */
        .set SELF, 0xFFC00000           /* PD[1023] = PD: the tables at SELF + i * 4096, PD at 0xFFFFF000 */
        .set SELFPD, 0xFFFFF000
        .set WIN, 1000                  /* a PDE created through the self-map */
        .set FLIP, 1022                 /* a PDE flipped between the directory and a table */
mode_selfref:
        call tag_all
        mov pd, %edi
        mov %edi, %eax
        or $3, %eax
        mov %eax, 1023 * 4(%edi)
        call reload_cr3
        mov $SELFPD, %esi               /* the directory seen as a page */
        mov pd, %edi
        call compare_page
        mov $SELF, %esi                 /* PDE 0's table seen as a page */
        mov pt_fwd, %edi
        call compare_page
        mov pt_fwd, %eax                /* PD[WIN] = the first identity table, written through the self-map */
        or $3, %eax
        mov %eax, SELFPD + WIN * 4
        mov pd, %edi
        cmp %eax, WIN * 4(%edi)
        je 1f
        incl c_bad
1:      call reload_cr3
        mov $(WIN << 22) + 0x20000, %esi
        mov $0x20, %ebx
        call check_frame
        /* PTE 5 of the table at PD[WIN] (= PT_fwd: the identity too) -> frame 0x21, through the
           recursive window; invlpg both linear pages that use it */
        movl $0x21007, SELF + WIN * 4096 + 5 * 4
        invlpg 0x5000
        invlpg (WIN << 22) + 0x5000
        mov $0x5000, %esi
        mov $0x21, %ebx
        call check_frame
        mov $(WIN << 22) + 0x5000, %esi
        mov $0x21, %ebx
        call check_frame
        movl $0x5007, SELF + WIN * 4096 + 5 * 4
        invlpg 0x5000
        invlpg (WIN << 22) + 0x5000
        mov $0x5000, %esi
        mov $0x5, %ebx
        call check_frame
        /* 2,000 rounds: PD[FLIP] alternately the directory itself and the identity table */
        mov $2000, %ecx
2:      push %ecx
        mov pd, %eax
        test $1, %ecx
        jz 3f
        mov pt_fwd, %eax
3:      or $3, %eax
        mov %eax, SELFPD + FLIP * 4
        call reload_cr3
        pop %ecx
        push %ecx
        test $1, %ecx
        jz 4f
        mov $(FLIP << 22) + 0x20000, %esi       /* identity table: frame 0x20's tags */
        mov $0x20, %ebx
        call check_frame
        jmp 5f
4:      mov $(FLIP << 22) + FLIP * 4096, %esi   /* directory as table: the directory as a page */
        mov pd, %edi
        call compare_page
5:      pop %ecx
        dec %ecx
        jnz 2b
        /* the self-map removes itself: the next use of it faults (not present, supervisor read) */
        movl $0, SELFPD + 1023 * 4
        call reload_cr3
        mov $SELFPD, %esi
        xor %eax, %eax
        call probe_read
        jmp finish

/* the page at %esi must read exactly as the identity view at %edi */
compare_page:
        incl c_mappings
        addl $1024, c_dwords
        mov $1024, %ecx
        repe cmpsl
        je 1f
        incl c_bad
1:      ret

/* ---- one frame mapped a million times ---------------------------------------------------------- */
mode_million:
        mov spare, %edi                 /* every entry of the spare table -> frame_x, RW (user on odd) */
        xor %ecx, %ecx
1:      mov frame_x, %eax
        or $3, %eax
        mov %ecx, %edx
        and $1, %edx
        shl $2, %edx
        or %edx, %eax
        mov %eax, (%edi, %ecx, 4)
        inc %ecx
        cmp $1024, %ecx
        jb 1b
        mov pd, %edi                    /* every PDE from npde on -> the spare table */
        mov npde, %ecx
2:      mov spare, %eax
        or $3, %eax
        mov %ecx, %edx
        and $1, %edx
        shl $2, %edx
        or %edx, %eax
        mov %eax, (%edi, %ecx, 4)
        inc %ecx
        cmp $1024, %ecx
        jb 2b
        call reload_cr3
        mov frame_x, %edi
        movl $0, (%edi)
        mov npde, %esi                  /* read, check and increment the counter through every page */
        shl $22, %esi
        xor %edx, %edx
3:      mov (%esi), %eax
        cmp %edx, %eax
        je 4f
        incl c_bad
4:      inc %edx
        mov %edx, (%esi)
        add $4096, %esi
        jnz 3b                          /* until the address wraps at 4 GiB */
        mov %edx, c_mappings
        mov frame_x, %edi
        cmp (%edi), %edx
        je 5f
        incl c_bad
5:      mov (%edi), %eax
        mov %eax, c_value
        jmp finish

/* ---- more distinct tables than the shadow pool holds ------------------------------------------- */
/* after the base: SPACES directories, then SPACES * 1023 tables; directory k's PDE i (i >= 1) names
   table k * 1023 + i - 1 with PDE access class (i + k) & 3 (RW, U); every table entry names frame_x */
mode_tables:
        mov tables_end_gfn, %eax
        shl $12, %eax
        mov %eax, %ebp                  /* the first directory */
        mov $SPACES * 1024, %ecx        /* directories and tables, 4 KiB each */
        shl $12, %ecx
        add %eax, %ecx
        cmp ram_size, %ecx
        ja bad_ram
        mov frame_x, %eax               /* the tables (all entries: frame_x, P|RW|U) */
        or $7, %eax
        lea SPACES * 4096(%ebp), %edi
        mov $SPACES * 1023 * 1024, %ecx
        rep stosl
        xor %ebx, %ebx                  /* directory k */
1:      mov %ebx, %edi
        shl $12, %edi
        add %ebp, %edi
        mov pt_fwd, %eax                /* PDE 0: the identity (the first 4 MiB) */
        or $7, %eax
        mov %eax, (%edi)
        mov $1, %ecx
2:      mov %ebx, %eax                  /* table k * 1023 + i - 1 */
        imul $1023, %eax
        add %ecx, %eax
        dec %eax
        shl $12, %eax
        lea SPACES * 4096(%ebp, %eax), %eax
        mov %ecx, %edx                  /* class (i + k) & 3 -> RW, U */
        add %ebx, %edx
        and $3, %edx
        shl $1, %edx
        or $1, %edx
        or %edx, %eax
        mov %eax, (%edi, %ecx, 4)
        inc %ecx
        cmp $1024, %ecx
        jb 2b
        inc %ebx
        cmp $SPACES, %ebx
        jb 1b
        mov frame_x, %edi
        mov nonce, %eax
        mov %eax, (%edi)
        xor %ebx, %ebx                  /* walk 0, 1, .. SPACES - 1, then 0 and 1 again */
3:      mov %ebx, %eax
        cmp $SPACES, %eax
        jb 4f
        sub $SPACES, %eax
4:      shl $12, %eax
        add %ebp, %eax
        mov %eax, cur_dir
        mov %eax, %cr3
        push %ebx
        call touch_tables
        pop %ebx
        inc %ebx
        cmp $SPACES + 2, %ebx
        jb 3b
        mov pd, %eax
        mov %eax, %cr3
        jmp finish

/* every PDE i >= 1 of the current directory: its first and last page read (frame_x: the nonce), a
   write through it when the class allows, seen through the identity */
touch_tables:
        mov $1, %ecx
        mov nonce, %edx
        mov frame_x, %edi
1:      mov %ecx, %esi
        shl $22, %esi
        incl c_mappings
        cmp (%esi), %edx
        je 2f
        incl c_bad
2:      cmp 1023 * 4096(%esi), %edx
        je 3f
        incl c_bad
3:      mov cur_dir, %eax               /* the PDE's class: writable? */
        testl $2, (%eax, %ecx, 4)
        jz 4f
        mov %ecx, 4(%esi)
        incl c_writes
        cmp 4(%edi), %ecx
        je 4f
        incl c_bad_writes
4:      inc %ecx
        cmp $1024, %ecx
        jb 1b
        ret

/* ---- page tables in the option-ROM range ------------------------------------------------------- */
mode_rom_table:                         /* slot 10 -> a page table at 0xC0000; read its 1,024 pages */
        mov pd, %edi
        movl $ROM_BASE | 3, 10 * PDES_PER_SLOT * 4(%edi)
        call reload_cr3
        mov $(10 << SLOT_SHIFT), %esi
1:      incl c_mappings
        mov $NOCHECK, %eax
        call probe_read_any
        add $4096, %esi
        cmp $(10 << SLOT_SHIFT) + 1024 * 4096, %esi
        jb 1b
        jmp finish
mode_rom_store:                         /* a store into that table (through the identity map) */
        mov pd, %edi
        movl $ROM_BASE | 3, 10 * PDES_PER_SLOT * 4(%edi)
        call reload_cr3
        movl $0x00200007, ROM_BASE
        invlpg (10 << SLOT_SHIFT)
        mov (10 << SLOT_SHIFT), %eax
        mov %eax, c_value
        jmp finish
mode_rom_cr3:                           /* the directory in the ROM: the next fetch walks it */
        mov $ROM_BASE, %eax
        mov %eax, %cr3
        nop
        jmp came_back

/* probe_read that may or may not fault (a fault is counted, not an error) */
probe_read_any:
        call probe_arm
        movl $1f, k_resume
        mov (%esi), %eax
        movl $0, probe_on
        decl c_probes                   /* no fault: not counted */
1:      ret

/* ---- the report -------------------------------------------------------------------------------- */
report:
        mov $names, %esi
        call puts
        inc %esi
        mov $counters, %ebx
1:      mov (%ebx), %eax
        call print_dec
        call puts
        inc %esi
        add $4, %ebx
        cmp $counters_end, %ebx
        jb 1b                           /* the last string is "}\n" */
        ret
puts:                                   /* the string at %esi (%esi left on its NUL) */
        mov (%esi), %al
        test %al, %al
        jz 1f
        call putc
        inc %esi
        jmp puts
1:      ret
putc:
        push %edx
        mov $0x3f8, %dx
        out %al, %dx
        pop %edx
        ret
print_dec:                              /* %eax, unsigned */
        push %ebx
        push %ecx
        push %edx
        mov $10, %ebx
        xor %ecx, %ecx
1:      xor %edx, %edx
        div %ebx
        push %edx
        inc %ecx
        test %eax, %eax
        jnz 1b
2:      pop %eax
        add $0x30, %al
        call putc
        dec %ecx
        jnz 2b
        pop %edx
        pop %ecx
        pop %ebx
        ret

        .bss
        .align 4096
image_end:
