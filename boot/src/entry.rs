//! The PV kernel entry point, the ELF notes, the hypercall page and the boot stack.
//!
//! Xen's PV domain builder (libxc for a domU, the hypervisor for dom0) reads the
//! `Xen` ELF notes below to learn that this image is a PV kernel, where the
//! hypercall page is and where to start. It then enters `_start` in 64-bit
//! mode, with `%rsi` = virtual address of `start_info`, event upcalls masked,
//! and the first part of memory mapped 1:1 from virtual address 0 (`VIRT_BASE`
//! = 0, `PADDR_OFFSET` = 0).
//!
//! `_start` switches to a stack of its own (in `.bss`, which the loader has
//! zero-filled) and calls `resilire_start(start_info)`, which the appliance
//! binary defines with `#[no_mangle] extern "C"`.
//!
//! The hypercall page lives in its own section (`.text.hypercall_page`): the
//! builder writes the hypercall stubs into it after loading the image, so it
//! must be a real, loaded, executable page that nothing ever clears.

use core::arch::global_asm;

/// Size of the boot stack (the only stack: the appliance is single-threaded).
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

// Each note: namesz=4 ("Xen\0"), descsz, type, name, desc, 4-byte padding.
// Labels are named (not numeric) to keep the assembler's Intel syntax happy.
global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note

    .balign 4
    .long 4, .Lgos_end - .Lgos, 6
    .asciz "Xen"
.Lgos: .asciz "Resilire"
.Lgos_end:
    .balign 4

    .long 4, .Lgver_end - .Lgver, 7
    .asciz "Xen"
.Lgver: .asciz "0.1"
.Lgver_end:
    .balign 4

    .long 4, .Lxver_end - .Lxver, 5
    .asciz "Xen"
.Lxver: .asciz "xen-3.0"
.Lxver_end:
    .balign 4

    .long 4, .Lldr_end - .Lldr, 8
    .asciz "Xen"
.Lldr: .asciz "generic"
.Lldr_end:
    .balign 4

    .long 4, 8, 3
    .asciz "Xen"
    .quad 0

    .long 4, 8, 4
    .asciz "Xen"
    .quad 0

    .long 4, 8, 1
    .asciz "Xen"
    .quad _start

    .long 4, 8, 2
    .asciz "Xen"
    .quad hypercall_page

    .popsection

    .pushsection .text.hypercall_page, "ax", @progbits
    .balign 4096
    .global hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc
    .popsection

    .pushsection .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global __resilire_stack_bottom
__resilire_stack_bottom:
    .skip {stack_size}
    .global __resilire_stack_top
__resilire_stack_top:
    .popsection

    .pushsection .text.entry, "ax", @progbits
    .global _start
_start:
    cld
    lea rsp, [rip + __resilire_stack_top]
    xor ebp, ebp
    mov rdi, rsi
    call resilire_start
2:
    ud2
    jmp 2b
    .popsection
"#,
    stack_size = const BOOT_STACK_SIZE,
);

extern "C" {
    /// First byte of the hypercall page (filled in by Xen).
    pub static hypercall_page: [u8; 4096];
    /// Lowest address of the boot stack; its first page can be unmapped as a guard.
    pub static __resilire_stack_bottom: u8;
}
