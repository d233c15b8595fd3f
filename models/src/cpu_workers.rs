//! How candle's CPU worker threads wait for work.
//!
//! candle runs element-wise ops on a pool of its own whose idle workers spin (25,000 pause
//! loops by default) before they sleep, while the matmuls run on rayon's threads. Every
//! element-wise op is followed by a spin that takes a core from the next matmul; on two
//! cores that cost up to a third of a forward when the machine is quiet, and doubled it when
//! another job shared the cores (bench-forward, benches/RESULTS.md).

/// The variable candle reads, once, when its pool starts.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's idle workers sleep at once instead of spinning, unless the user set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Call it first thing in `main`, before any tensor op and
/// before other threads start (it sets a process environment variable).
pub fn sleep_idle_workers() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, "0");
    }
}
