/*
 * LD_PRELOAD library: the process (and every program it starts with the same environment) sees an older
 * x86-64 than the one it runs on: TIERGATE_AS_CPU names which, by tiergate's CPU kinds (`tiergate model
 * cpu`): x86-64-avx2 (no AVX-512, no VNNI: AMD Zen 2/3, most edge boxes), x86-64-avx-vnni (AVX2 with the
 * 256-bit VNNI: Intel's client and Atom cores since Alder Lake) or x86-64-avx512 (AVX-512 without VNNI:
 * Skylake-SP). scripts/as-cpu/as-cpu sets it up. Used to measure and calibrate ONNX Runtime's int8 kernels
 * of those kinds, and llama.cpp's, on a newer machine: each kind's kernels run the same instructions on any
 * CPU that has them.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag `cpuid_fault`) makes the `cpuid`
 * instruction trap with SIGSEGV; the handler runs the real instruction with faulting briefly off, clears
 * the feature bits, and steps over it. Every run-time dispatcher asks `cpuid` (ONNX Runtime's MLAS and
 * cpuinfo, ggml's, Rust's std_detect), so all of them pick the older kind's kernels. `xgetbv` still says
 * the OS saves AVX-512 state; dispatchers require the cpuid bit too. glibc's own string functions are
 * chosen by ld.so before this runs and may still use AVX-512 (negligible for these workloads).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_GET_CPUID_ 0x1011
#define ARCH_SET_CPUID_ 0x1012

static struct sigaction previous;

static void real_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
}

/* The feature bits of CPUID leaf 7 (subleaf 0: EBX, ECX, EDX; subleaf 1: EAX, EDX) to clear. */
struct hidden {
    uint32_t ebx0, ecx0, edx0, eax1, edx1;
};

#define BIT(n) (1u << (n))
/* AVX-512 beyond the core set of Skylake-SP (F 16, DQ 17, CD 28, BW 30, VL 31): IFMA 21, PF 26, ER 27;
 * VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14; 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, FP16 23; the AMX
 * tiles (EDX 22, 24, 25); and in subleaf 1 AVX-VNNI 4, AVX512-BF16 5, AVX-IFMA 23, AVX-VNNI-INT8 4,
 * AVX-NE-CONVERT 5, AVX-VNNI-INT16 10. */
#define AVX512_CORE_EBX (BIT(16) | BIT(17) | BIT(28) | BIT(30) | BIT(31))
#define AVX512_MORE_EBX (BIT(21) | BIT(26) | BIT(27))
#define AVX512_MORE_ECX (BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14))
#define AVX512_MORE_EDX (BIT(2) | BIT(3) | BIT(8) | BIT(23) | BIT(22) | BIT(24) | BIT(25))
#define AVX_VNNI_EAX1 BIT(4)
#define MORE_EAX1 (BIT(5) | BIT(23))
#define MORE_EDX1 (BIT(4) | BIT(5) | BIT(10))

/* What each kind (tiergate's names, `tiergate model cpu`) lacks of a newer CPU. */
static struct hidden hidden_for(const char *kind) {
    struct hidden all_but_avx2 = {AVX512_CORE_EBX | AVX512_MORE_EBX, AVX512_MORE_ECX, AVX512_MORE_EDX,
                                  AVX_VNNI_EAX1 | MORE_EAX1, MORE_EDX1};
    if (strcmp(kind, "x86-64-avx2") == 0) {
        return all_but_avx2; /* AMD Zen 2 / 3, Intel before Ice Lake */
    }
    if (strcmp(kind, "x86-64-avx-vnni") == 0) {
        all_but_avx2.eax1 &= ~AVX_VNNI_EAX1; /* Intel's client and Atom cores since Alder Lake (N100) */
        return all_but_avx2;
    }
    if (strcmp(kind, "x86-64-avx512") == 0) {
        all_but_avx2.ebx0 &= ~AVX512_CORE_EBX; /* Skylake-SP: AVX-512 without VNNI */
        return all_but_avx2;
    }
    fprintf(stderr, "hide_cpu_features: TIERGATE_AS_CPU=%s is not x86-64-avx2, x86-64-avx-vnni or x86-64-avx512\n",
            kind);
    _exit(121);
}

static struct hidden hide;

static void hide_features(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    if (leaf == 7 && subleaf == 0) {
        regs[1] &= ~hide.ebx0;
        regs[2] &= ~hide.ecx0;
        regs[3] &= ~hide.edx0;
    } else if (leaf == 7 && subleaf == 1) {
        regs[0] &= ~hide.eax1;
        regs[3] &= ~hide.edx1;
    }
}

static void on_sigsegv(int signal_number, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *gregs = uc->uc_mcontext.gregs;
    /* A faulting cpuid is a general-protection fault: SI_KERNEL, and the instruction pointer is on it. */
    if (info->si_code == SI_KERNEL) {
        const uint8_t *ip = (const uint8_t *)gregs[REG_RIP];
        if (ip[0] == 0x0f && ip[1] == 0xa2) {
            uint32_t leaf = (uint32_t)gregs[REG_RAX];
            uint32_t subleaf = (uint32_t)gregs[REG_RCX];
            uint32_t regs[4];
            syscall(SYS_arch_prctl, ARCH_SET_CPUID_, 1);
            real_cpuid(leaf, subleaf, regs);
            syscall(SYS_arch_prctl, ARCH_SET_CPUID_, 0);
            hide_features(leaf, subleaf, regs);
            gregs[REG_RAX] = regs[0];
            gregs[REG_RBX] = regs[1];
            gregs[REG_RCX] = regs[2];
            gregs[REG_RDX] = regs[3];
            gregs[REG_RIP] += 2;
            return;
        }
    }
    /* Not a cpuid: a real crash. Hand it to whoever had the signal before, or let it kill the process. */
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(signal_number, info, context);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(signal_number);
    } else {
        signal(SIGSEGV, SIG_DFL);
    }
}

__attribute__((constructor)) static void start_hiding(void) {
    const char *kind = getenv("TIERGATE_AS_CPU");
    hide = hidden_for(kind != NULL ? kind : "");
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsegv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &previous) != 0) {
        perror("hide_cpu_features: sigaction");
        _exit(121);
    }
    /* Inherited by every thread created from here on; execve resets it, and LD_PRELOAD sets it again. */
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID_, 0) != 0) {
        perror("hide_cpu_features: arch_prctl(ARCH_SET_CPUID, 0) (no CPUID faulting here)");
        _exit(121);
    }
}
