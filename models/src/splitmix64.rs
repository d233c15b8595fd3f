//! SplitMix64 (Steele, Lea & Flood 2014), the one generator behind every seeded draw of the
//! project (data orders, LoRA initialisation, synthetic weights, diffusion noise and the
//! trainer's per-visit draws): its output is fixed by its definition, so nothing drawn
//! changes with a dependency's version, and the golden scripts reproduce it in numpy.

/// The state's increment (the golden ratio's 64-bit fraction).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The output function: the state mixed by two xor-shift-multiplies. The n-th output of a
/// generator started at state s is `mix(s + n·GAMMA)`, so counter-based draws call it directly.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a (64-bit) of a name's bytes: the seed a name stands for (synthetic weights' tensor
/// names, `trainer sample`'s prompts).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The sequential generator: the state advances by [`GAMMA`] before each output.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }
}
