//! exp for f32 written so that loops over slices vectorise: libm's `expf` is a call per
//! element, and the softmax, SiLU and GELU kernels spend most of their time in it.
//!
//! exp(x) = 2^k · exp(r) with k = round(x / ln 2) and r = x − k·ln 2 (|r| ≤ ½ln 2, ln 2 split
//! in two parts so r is exact to f32), exp(r) by its Taylor polynomial to degree 7
//! (truncation below 1e-8 relative), and 2^k put straight into the exponent bits.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with trailing zero bits so k·LN2_HI is exact.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Below this exp(x) is subnormal or 0, above it 2^k would overflow the exponent: the input
/// is clamped, so the result stays a normal float (exp(−∞) gives 1.2e-38, not 0). NaN passes
/// the clamp and the arithmetic as NaN, so no branch stops the loops from vectorising.
const MIN_X: f32 = -87.33;
const MAX_X: f32 = 88.37;
/// 1.5·2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(MIN_X, MAX_X);
    let k = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn matches_libm_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "largest relative error {worst:e}");
    }

    #[test]
    fn edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1.2e-38);
        assert!(exp_f32(f32::NEG_INFINITY) >= 0.0);
        assert!(exp_f32(f32::INFINITY).is_finite() && exp_f32(f32::INFINITY) > 1e38);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(1.0), std::f32::consts::E);
    }
}
