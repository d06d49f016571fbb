//! What the engine needs to know about the CPU: which graph `auto` runs ([`CpuKind`]) and which
//! of ONNX Runtime's int8 kernels compute int4-fast's products ([`Int8Kernels`]), hence which
//! early-exit gate was calibrated on its answers.

use std::fmt;
use std::str::FromStr;

/// The CPU facts `auto` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKind {
    /// x86-64 with the AVX-512 core set: the int4 graph's one-row kernel is the fast one.
    X86Avx512,
    /// x86-64 without it (AVX2 machines): the int4 one-row kernel is 2-3x slower than fp32,
    /// int4-fast's int8 one 2-2.5x faster.
    X86WithoutAvx512,
    /// Anything else (aarch64 edge boards): not measured; int4, the smaller graph.
    Other,
}

impl CpuKind {
    /// This machine's (see `From<Int8Kernels>`).
    pub fn detect() -> CpuKind {
        Int8Kernels::detect().into()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CpuKind::X86Avx512 => "x86-64 with AVX-512",
            CpuKind::X86WithoutAvx512 => "x86-64 without AVX-512",
            CpuKind::Other => "not x86-64",
        }
    }
}

/// AVX-512 means the AVX-512 core set MLAS dispatches its AVX-512 kernels on (F, BW, DQ, CD, VL):
/// a CPU with AVX-512F alone runs the AVX2 kernels and is told apart as one.
impl From<Int8Kernels> for CpuKind {
    fn from(kernels: Int8Kernels) -> CpuKind {
        match kernels {
            Int8Kernels::X86Avx512Vnni | Int8Kernels::X86Avx512 => CpuKind::X86Avx512,
            Int8Kernels::X86AvxVnni | Int8Kernels::X86Avx2 | Int8Kernels::X86 => {
                CpuKind::X86WithoutAvx512
            }
            Int8Kernels::Aarch64 | Int8Kernels::Other => CpuKind::Other,
        }
    }
}

/// The family of ONNX Runtime's int8 kernels (MLAS's `QNBitGemm` dispatch) this CPU runs
/// int4-fast's products with. Each family sums the same integers, but the float work around
/// the sums is its own code, so int4-fast's logits, answers and confidence differ between
/// families (on SmolLM2, the gate calibrated on AVX2's answers keeps 17% wrong answers on an
/// AVX-512 VNNI CPU's; docs/benchmarks.md, Run R). Its name keys `router.confidence_by_cpu`.
/// The exact graphs (fp32, int4) compute the same logits on every family (within ~3e-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Int8Kernels {
    /// AVX-512 core (F, BW, DQ, CD, VL) with AVX-512 VNNI: `vpdpbusd` on 512-bit registers.
    X86Avx512Vnni,
    /// AVX-512 core without VNNI.
    X86Avx512,
    /// AVX2 with AVX-VNNI (the 256-bit VNNI of Intel's client cores), no AVX-512.
    X86AvxVnni,
    /// AVX2 (and FMA), neither VNNI.
    X86Avx2,
    /// x86-64 without AVX2: ONNX Runtime's portable path.
    X86,
    /// 64-bit Arm (NEON, with dot-product or i8mm kernels where present; not told apart, not measured).
    Aarch64,
    /// Any other architecture.
    Other,
}

impl Int8Kernels {
    /// Every kind: x86-64's from the richest instruction set down, then other architectures.
    pub const ALL: [Int8Kernels; 7] = [
        Int8Kernels::X86Avx512Vnni,
        Int8Kernels::X86Avx512,
        Int8Kernels::X86AvxVnni,
        Int8Kernels::X86Avx2,
        Int8Kernels::X86,
        Int8Kernels::Aarch64,
        Int8Kernels::Other,
    ];

    /// This machine's, by the CPU features MLAS dispatches on.
    pub fn detect() -> Int8Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512_core = has!("avx512f")
                && has!("avx512bw")
                && has!("avx512dq")
                && has!("avx512cd")
                && has!("avx512vl");
            if avx512_core && has!("avx512vnni") {
                Int8Kernels::X86Avx512Vnni
            } else if avx512_core {
                Int8Kernels::X86Avx512
            } else if has!("avx2") && has!("avxvnni") {
                Int8Kernels::X86AvxVnni
            } else if has!("avx2") && has!("fma") {
                Int8Kernels::X86Avx2
            } else {
                Int8Kernels::X86
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Int8Kernels::Aarch64
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Int8Kernels::Other
        }
    }

    /// The name in the config (`[router.confidence_by_cpu.<name>.int4-fast]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Int8Kernels::X86Avx512Vnni => "x86-64-avx512-vnni",
            Int8Kernels::X86Avx512 => "x86-64-avx512",
            Int8Kernels::X86AvxVnni => "x86-64-avx-vnni",
            Int8Kernels::X86Avx2 => "x86-64-avx2",
            Int8Kernels::X86 => "x86-64",
            Int8Kernels::Aarch64 => "aarch64",
            Int8Kernels::Other => "other",
        }
    }
}

impl fmt::Display for Int8Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Int8Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Int8Kernels::ALL
            .into_iter()
            .find(|kernels| kernels.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Int8Kernels::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown CPU kind `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_name_parses_back_and_a_typo_names_the_choices() {
        for kernels in Int8Kernels::ALL {
            assert_eq!(kernels.as_str().parse(), Ok(kernels));
        }
        let error = "x86-64-avx512vnni".parse::<Int8Kernels>().unwrap_err();
        assert!(
            error.contains("x86-64-avx512-vnni, x86-64-avx512,"),
            "{error}"
        );
    }

    /// Every family agrees with the coarser kind `auto` uses: the AVX-512 families are its
    /// AVX-512 kind, the other x86-64 ones its kind without, and other architectures neither.
    #[test]
    fn every_family_agrees_with_its_kind() {
        for kernels in Int8Kernels::ALL {
            match CpuKind::from(kernels) {
                CpuKind::X86Avx512 => assert!(matches!(
                    kernels,
                    Int8Kernels::X86Avx512Vnni | Int8Kernels::X86Avx512
                )),
                CpuKind::X86WithoutAvx512 => assert!(matches!(
                    kernels,
                    Int8Kernels::X86AvxVnni | Int8Kernels::X86Avx2 | Int8Kernels::X86
                )),
                CpuKind::Other => {
                    assert!(matches!(kernels, Int8Kernels::Aarch64 | Int8Kernels::Other))
                }
            }
        }
        assert_eq!(CpuKind::detect(), CpuKind::from(Int8Kernels::detect()));
    }
}
