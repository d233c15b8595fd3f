use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let d = Device::Cpu;
    for (m, k, n) in [
        (688usize, 512usize, 1536usize),
        (688, 1536, 512),
        (512, 384, 1536),
        (688, 512, 512),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let wt = w.t()?.contiguous()?;
        let mut a = vec![];
        let mut b = vec![];
        for _ in 0..30 {
            let t = Instant::now();
            let _ = x.matmul(&w.t()?)?;
            a.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let _ = x.matmul(&wt)?;
            b.push(t.elapsed().as_secs_f64() * 1e3);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let gf = 2.0 * (m * k * n) as f64 / 1e6;
        println!(
            "{m}x{k}x{n}: w.t() {:.3} ms ({:.0} GF/s), wt contiguous {:.3} ms ({:.0} GF/s)",
            a[15],
            gf / a[15],
            b[15],
            gf / b[15]
        );
    }
    Ok(())
}
