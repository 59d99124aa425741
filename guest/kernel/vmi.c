/* vmi.c - finding the VMI ROM, binding to it, patching the kernel's call sites.
 *
 * How binding works
 * -----------------
 * 1. Discovery (Linux 2.6.21 rules, vmi-abi.md section 1): look at every 2 KiB boundary from
 *    VMI_ROM_SCAN_START to VMI_ROM_SCAN_END through the kernel's direct map (KERNBASE + phys).
 *    An address is a candidate if it starts with the option-ROM signature 0xAA55 and holds
 *    VMI_SIGNATURE ("cVmi") at +8; anything else is skipped silently.  A candidate is refused,
 *    with a one-line reason, if its major API version is not VMI_API_REV_MAJOR, its minor is
 *    below VMI_API_REV_MINOR, it has no PCI header, or its license string is not exactly "GPL" or
 *    "GPL v2".  An unknown PCI vendor/device only warns.  The first accepted ROM is used; if none
 *    is, the kernel stays native and says why.
 * 2. Initialisation: call the ROM's vmi_init jump point (ROM + 0x80) with interrupts off; EAX != 0
 *    means failure -> native.
 * 3. Relocations: for every call number the ROM's minor version covers (extensions only when
 *    their *_SINCE_MINOR <= the ROM's minor), call get_reloc (ROM + 0x88) with EAX = call; the
 *    answer is EAX = target linear address, DL = relocation type.  Every answer is validated
 *    before anything is changed: an unknown type, a zero target for CALL_REL/JUMP_REL, or a
 *    JUMP_REL for a call that returns refuses the ROM (the kernel stays native, unmodified).
 * 4. Binding:
 *    - the table vmi_ops (pv.h): CALL_REL -> the ROM's address, called as a regparm(3) C
 *      function; NOP -> an empty function; NONE -> the native implementation stays;
 *    - the inline sites recorded in .vmi_sites (vmi_site.h): CALL_REL -> `call rel32` + NOPs,
 *      JUMP_REL -> `jmp rel32` + NOPs (only for sites that never return, e.g. iret),
 *      NOP -> all NOPs, NONE -> untouched.
 *    With no ROM (or vmi=off, or any refusal) not one byte of kernel text changes.
 * 5. Report: a human line per fact and one `VMIROM-JSON {"event":"vmi",...}` line.
 */
#include "kernel.h"
#include "mmu.h"
#include "pv.h"

struct vmi_state vmi;

extern struct vmi_site __vmi_sites_start[], __vmi_sites_end[];
extern char _etext[];

/* CRC-32 (the zlib one) of the kernel text, reported before and after binding so a tool can
 * check that nothing changed without a ROM (and compare with the ELF file). */
static u32 text_crc(void)
{
    u32 crc = 0xFFFFFFFF;
    for (const u8 *p = (const u8 *)_kernel_start; p < (const u8 *)_etext; p++) {
        crc ^= *p;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1));
    }
    return ~crc;
}
static u32 crc_before;

typedef VMICALL u32 (*vmi_init_fn)(void);
typedef VMICALL u64 (*get_reloc_fn)(u32 call);

static const char *const call_names[VMI_NUM_CALLS] = {
#define X(n, name) [n] = #name,
    VMI_CALL_LIST(X)
#undef X
};

const char *vmi_call_name(int call)
{
    if (call < 0 || call >= VMI_NUM_CALLS || !call_names[call])
        return "?";
    return call_names[call];
}

static const char *const reloc_names[4] = { "NONE", "CALL_REL", "JUMP_REL", "NOP" };

/* Which table entry each call binds. */
struct binding {
    u8 call;
    u16 offset;
};
#define B(name, field) { VMI_CALL_##name, offsetof(struct vmi_ops, field) }
static const struct binding bindings[] = {
    B(CPUID, cpuid),
    B(SetGDT, set_gdt),
    B(SetIDT, set_idt),
    B(SetTR, set_tr),
    B(WriteGDTEntry, write_gdt_entry),
    B(WriteIDTEntry, write_idt_entry),
    B(UpdateKernelStack, update_kernel_stack),
    B(SetCR0, set_cr0),
    B(SetCR3, set_cr3),
    B(SetCR4, set_cr4),
    B(GetCR0, get_cr0),
    B(GetCR4, get_cr4),
    B(WBINVD, wbinvd),
    B(RDTSC, rdtsc),
    B(CLTS, clts),
    B(Halt, halt),
    B(Reboot, reboot),
    B(Shutdown, shutdown),
    B(SetPxE, set_pxe),
    B(AllocatePage, allocate_page),
    B(ReleasePage, release_page),
    B(FlushTLB, flush_tlb),
    B(SetLinearMapping, set_linear_mapping),
    B(SetLazyMode, set_lazy_mode),
    B(FlushDeferred, flush_deferred),
    B(IODelay, io_delay),
    B(GetCycleFrequency, get_cycle_frequency),
    B(GetCycleCounter, get_cycle_counter),
    B(SetAlarm, set_alarm),
    B(CancelAlarm, cancel_alarm),
    B(GetWallclockTime, get_wallclock),
    B(WallclockUpdated, wallclock_updated),
};
#undef B

/* The minor API version that introduced a call (the extensions after 3.0). */
static int call_since_minor(int call)
{
    if (call < VMI_NUM_CALLS_3_0)
        return 0;
    if (call == VMI_CALL_GetSharedInfo)
        return VMI_CALL_GetSharedInfo_SINCE_MINOR;
    if (call == VMI_CALL_FlushDeferred)
        return VMI_CALL_FlushDeferred_SINCE_MINOR;
    return 256;   /* unknown extension: never asked */
}

int vmi_call_type(int call)
{
    if (!vmi.bound || call < 0 || call >= VMI_NUM_CALLS)
        return VMI_RELOCATION_NONE;
    return vmi.reloc_type[call];
}

/* printable copy of a NUL-terminated string inside the ROM */
static void rom_string(char *out, size_t n, const u8 *s)
{
    size_t i = 0;
    for (; i + 1 < n && s[i]; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[i] = 0;
}

/* 1 = accepted, 0 = not a VMI ROM (skip silently), -1 = refused (vmi.reason set) */
static int check_rom(u32 pa)
{
    const u8 *rom = P2V(pa);
    const struct vrom_header *h = (const void *)rom;
    char why[64];

    if (h->rom_signature != VMI_OPTION_ROM_SIGNATURE || h->vrom_signature != VMI_SIGNATURE)
        return 0;
    if (h->api_version_maj != VMI_API_REV_MAJOR || (int)h->api_version_min + 1 < VMI_API_REV_MINOR + 1) {
        ksnprintf(why, sizeof why, "mismatched rom version %u.%u (need %u.%u or a newer minor)",
                  h->api_version_maj, h->api_version_min, VMI_API_REV_MAJOR, VMI_API_REV_MINOR);
        goto refuse;
    }
    if (h->pci_header_offs == 0) {
        ksnprintf(why, sizeof why, "ROM does not contain PCI header");
        goto refuse;
    }
    const struct pci_header *pci = (const void *)(rom + h->pci_header_offs);
    if (pci->vendor_id != VMI_PCI_VENDOR_VMWARE || pci->device_id != VMI_PCI_DEVICE_VMI)
        kprintf("vmi: ROM at %05x from unknown manufacturer (PCI %04x:%04x), using it anyway\n",
                pa, pci->vendor_id, pci->device_id);
    char lic[16] = "unspecified";
    if (h->license_offs)
        rom_string(lic, sizeof lic, rom + h->license_offs);
    if (strcmp(lic, "GPL") != 0 && strcmp(lic, "GPL v2") != 0) {
        ksnprintf(why, sizeof why, "non-GPL license \"%s\"", lic);
        goto refuse;
    }
    vmi.api_major = h->api_version_maj;
    vmi.api_minor = h->api_version_min;
    vmi.rom_major = pci->rom_version_maj;
    vmi.rom_minor = pci->rom_version_min;
    vmi.virtual_top = h->virtual_top;
    strlcpy(vmi.manufacturer, "unknown", sizeof vmi.manufacturer);
    strlcpy(vmi.product, "unknown", sizeof vmi.product);
    if (h->pnp_header_offs) {
        const struct pnp_header *pnp = (const void *)(rom + h->pnp_header_offs);
        if (pnp->manufacturer_offs)
            rom_string(vmi.manufacturer, sizeof vmi.manufacturer, rom + pnp->manufacturer_offs);
        if (pnp->product_offs)
            rom_string(vmi.product, sizeof vmi.product, rom + pnp->product_offs);
    }
    return 1;

refuse:
    kprintf("vmi: refusing ROM at %05x: %s\n", pa, why);
    if (!vmi.reason[0])
        ksnprintf(vmi.reason, sizeof vmi.reason, "ROM at 0x%05x: %s", pa, why);
    if (!vmi.rom_pa)
        vmi.rom_pa = pa;                /* remembered for the report */
    return -1;
}

static u32 probe(void)
{
    for (u32 pa = VMI_ROM_SCAN_START; pa < VMI_ROM_SCAN_END; pa += VMI_ROM_SCAN_STEP)
        if (check_rom(pa) == 1)
            return pa;
    return 0;
}

/* Ask get_reloc for every call; validate all answers before changing anything. */
static int fetch_relocations(u32 pa)
{
    get_reloc_fn get_reloc = (get_reloc_fn)((u32)P2V(pa) + VROM_GET_RELOC_OFFSET);
    for (int n = 0; n < VMI_NUM_CALLS; n++) {
        vmi.reloc_type[n] = VMI_RELOCATION_NONE;
        vmi.reloc_eip[n] = 0;
        if (call_since_minor(n) > vmi.api_minor)
            continue;
        u64 r = get_reloc(n);
        u32 eip = (u32)r;
        u32 type = (u32)(r >> 32) & 0xFF;
        const char *bad = 0;
        if (type > VMI_RELOCATION_NOP)
            bad = "an unknown relocation type";
        else if ((type == VMI_RELOCATION_CALL_REL || type == VMI_RELOCATION_JUMP_REL) && !eip)
            bad = "a null target";
        else if (type == VMI_RELOCATION_JUMP_REL && n != VMI_CALL_IRET && n != VMI_CALL_SYSEXIT)
            bad = "JUMP_REL for a call that returns";
        if (bad) {
            ksnprintf(vmi.reason, sizeof vmi.reason, "ROM at 0x%05x: get_reloc(%d %s) returned %s (type %u)",
                      pa, n, vmi_call_name(n), bad, type);
            return -1;
        }
        vmi.reloc_type[n] = type;
        vmi.reloc_eip[n] = eip;
        vmi.counts[type]++;
    }
    return 0;
}

static void bind_table(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(bindings); i++) {
        u32 *slot = (u32 *)((u8 *)&vmi_ops + bindings[i].offset);
        switch (vmi.reloc_type[bindings[i].call]) {
        case VMI_RELOCATION_CALL_REL:
            *slot = vmi.reloc_eip[bindings[i].call];
            break;
        case VMI_RELOCATION_NOP:
            *slot = pv_empty_call_target;
            break;
        default:
            break;      /* NONE: keep the native implementation */
        }
    }
}

static void patch_rel(u8 *p, u8 opcode, u32 target, u32 len)
{
    u32 rel = target - ((u32)p + 5);
    p[0] = opcode;
    memcpy(p + 1, &rel, 4);
    memset(p + 5, 0x90, len - 5);
}

static void patch_sites(void)
{
    for (struct vmi_site *s = __vmi_sites_start; s < __vmi_sites_end; s++) {
        vmi.sites++;
        if (s->call >= VMI_NUM_CALLS || s->length < VMI_SITE_MIN_CALL_LENGTH)
            continue;                           /* malformed record: leave the site native */
        u8 *p = (u8 *)s->address;
        u32 target = vmi.reloc_eip[s->call];
        switch (vmi.reloc_type[s->call]) {
        case VMI_RELOCATION_CALL_REL:
            patch_rel(p, 0xE8, target, s->length);
            vmi.patched++;
            break;
        case VMI_RELOCATION_JUMP_REL:
            if (!(s->flags & VMI_SITE_F_NORETURN))
                continue;                       /* validated away already; be safe */
            patch_rel(p, 0xE9, target, s->length);
            vmi.patched++;
            break;
        case VMI_RELOCATION_NOP:
            memset(p, 0x90, s->length);
            vmi.patched++;
            break;
        default:
            break;
        }
    }
    /* serialise after modifying code (a jump is enough on every x86) */
    asm volatile("jmp 1f\n1:" ::: "memory");
}

static void count_sites(void)
{
    vmi.sites = __vmi_sites_end - __vmi_sites_start;
}

void vmi_probe_and_bind(void)
{
    crc_before = text_crc();
    u32 fl = irq_save();
    if (cmdline.vmi_off) {
        strlcpy(vmi.reason, "vmi=off on the command line", sizeof vmi.reason);
        count_sites();
        goto native;
    }
    u32 pa = probe();
    if (!pa) {
        if (!vmi.reason[0])
            strlcpy(vmi.reason, "no VMI ROM found", sizeof vmi.reason);
        count_sites();
        goto native;
    }
    vmi.rom_pa = pa;
    vmi.reason[0] = 0;
    kprintf("vmi: found %s %s at %05x, API version %u.%u, ROM version %u.%u\n", vmi.manufacturer,
            vmi.product, pa, vmi.api_major, vmi.api_minor, vmi.rom_major, vmi.rom_minor);
    if (vmi.virtual_top)
        kprintf("vmi: reserving virtual address space above %08x\n", vmi.virtual_top);

    vmi_init_fn init = (vmi_init_fn)((u32)P2V(pa) + VROM_VMI_INIT_OFFSET);
    u32 rc = init();
    if (rc != 0) {
        ksnprintf(vmi.reason, sizeof vmi.reason, "ROM at 0x%05x: vmi_init failed (returned %d)", pa, (int)rc);
        count_sites();
        goto native;
    }
    if (fetch_relocations(pa) < 0) {
        memset(vmi.counts, 0, sizeof vmi.counts);
        count_sites();
        goto native;
    }
    vmi.bound = 1;
    bind_table();
    patch_sites();
    restore_fl(fl);
    return;

native:
    vmi.bound = 0;
    restore_fl(fl);
}

void vmi_report(void)
{
    char q[160], man[64], prod[64];
    u32 crc_after = text_crc();
    if (vmi.bound) {
        if (cmdline.vmi_debug)
            for (int n = 0; n < VMI_NUM_CALLS; n++) {
                if (call_since_minor(n) > vmi.api_minor)
                    continue;
                kprintf("vmi: %2d %-20s %-8s %08x\n", n, vmi_call_name(n), reloc_names[vmi.reloc_type[n]],
                        vmi.reloc_eip[n]);
            }
        kprintf("vmi: bound at ring %d: NONE %u, CALL_REL %u, JUMP_REL %u, NOP %u; %u of %u sites patched\n",
                kernel_ring, vmi.counts[0], vmi.counts[1], vmi.counts[2], vmi.counts[3], vmi.patched, vmi.sites);
        json_str(man, sizeof man, vmi.manufacturer);
        json_str(prod, sizeof prod, vmi.product);
        jsonline("{\"event\":\"vmi\",\"status\":\"bound\",\"reason\":\"\",\"ring\":%d,"
                 "\"rom\":{\"addr\":%u,\"manufacturer\":%s,\"product\":%s,\"api\":\"%u.%u\","
                 "\"rom_version\":\"%u.%u\",\"virtual_top\":%u},"
                 "\"counts\":{\"NONE\":%u,\"CALL_REL\":%u,\"JUMP_REL\":%u,\"NOP\":%u},"
                 "\"sites\":%u,\"patched\":%u,\"text_crc\":{\"before\":%u,\"after\":%u}}",
                 kernel_ring, vmi.rom_pa, man, prod, vmi.api_major, vmi.api_minor, vmi.rom_major,
                 vmi.rom_minor, vmi.virtual_top, vmi.counts[0], vmi.counts[1], vmi.counts[2],
                 vmi.counts[3], vmi.sites, vmi.patched, crc_before, crc_after);
    } else {
        kprintf("vmi: native mode: %s\n", vmi.reason);
        json_str(q, sizeof q, vmi.reason);
        if (vmi.rom_pa)
            ksnprintf(man, sizeof man, "{\"addr\":%u}", vmi.rom_pa);
        else
            strlcpy(man, "null", sizeof man);
        jsonline("{\"event\":\"vmi\",\"status\":\"native\",\"reason\":%s,\"ring\":%d,\"rom\":%s,"
                 "\"counts\":{\"NONE\":0,\"CALL_REL\":0,\"JUMP_REL\":0,\"NOP\":0},"
                 "\"sites\":%u,\"patched\":0,\"text_crc\":{\"before\":%u,\"after\":%u}}",
                 q, kernel_ring, man, vmi.sites, crc_before, crc_after);
    }
}
