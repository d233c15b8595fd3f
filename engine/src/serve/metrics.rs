//! The server's Prometheus metrics (`GET /metrics`, text format 0.0.4): requests by route and
//! status, latency histograms by route, queue depth, tokens, batch sizes and the feature
//! cache. Written by hand: a few counters under one mutex cost nothing next to a forward pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BOUNDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, x: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| x <= b) {
            self.counts[i] += 1;
        }
        self.sum += x;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Debug)]
struct State {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    batch_sizes: Histogram,
    decoder_steps: u64,
    prompt_tokens: u64,
    generated_tokens: u64,
    cache_hits: u64,
    cache_misses: u64,
    cache_bytes: usize,
    cancelled: u64,
}

#[derive(Debug)]
pub struct Metrics {
    state: Mutex<State>,
    /// Requests accepted and not yet answered.
    pub queue_depth: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_sizes: Histogram::new(&BATCH_BOUNDS),
                decoder_steps: 0,
                prompt_tokens: 0,
                generated_tokens: 0,
                cache_hits: 0,
                cache_misses: 0,
                cache_bytes: 0,
                cancelled: 0,
            }),
            queue_depth: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic elsewhere while holding the lock leaves counters that are still counters.
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.with(|s| {
            *s.requests.entry((route, status)).or_default() += 1;
            s.latency
                .entry(route)
                .or_insert_with(|| Histogram::new(&LATENCY_BOUNDS))
                .observe(took.as_secs_f64());
        });
    }

    /// One decoder call's worth of work: `size` sequences (prompts of a fast batch, or the
    /// running generations of a step).
    pub fn batch(&self, size: usize) {
        self.with(|s| {
            s.batch_sizes.observe(size as f64);
            s.decoder_steps += 1;
        });
    }

    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.with(|s| {
            s.prompt_tokens += prompt as u64;
            s.generated_tokens += generated as u64;
        });
    }

    /// A request dropped because its client went away.
    pub fn cancelled(&self) {
        self.with(|s| s.cancelled += 1);
    }

    pub fn cache(&self, hits: u64, misses: u64, bytes: usize) {
        self.with(|s| {
            s.cache_hits = hits;
            s.cache_misses = misses;
            s.cache_bytes = bytes;
        });
    }

    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        let depth = self.queue_depth.load(Ordering::Relaxed);
        self.with(|s| {
            let mut out = String::new();
            out.push_str("# HELP unireward_requests_total Requests answered, by route and status.\n");
            out.push_str("# TYPE unireward_requests_total counter\n");
            for ((route, status), n) in &s.requests {
                let _ = writeln!(
                    out,
                    "unireward_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
            out.push_str("# HELP unireward_request_duration_seconds Time from request to answer.\n");
            out.push_str("# TYPE unireward_request_duration_seconds histogram\n");
            for (route, h) in &s.latency {
                h.render(
                    &mut out,
                    "unireward_request_duration_seconds",
                    &format!("route=\"{route}\""),
                );
            }
            out.push_str("# HELP unireward_queue_depth Requests accepted and not yet answered.\n");
            out.push_str("# TYPE unireward_queue_depth gauge\n");
            let _ = writeln!(out, "unireward_queue_depth {depth}");
            out.push_str("# HELP unireward_batch_size Sequences per decoder call.\n");
            out.push_str("# TYPE unireward_batch_size histogram\n");
            s.batch_sizes.render(&mut out, "unireward_batch_size", "");
            for (name, help, value) in [
                ("unireward_prompt_tokens_total", "Prompt tokens run.", s.prompt_tokens),
                ("unireward_generated_tokens_total", "Tokens generated (rate() gives tokens/s).", s.generated_tokens),
                ("unireward_feature_cache_hits_total", "Media whose features came from the cache.", s.cache_hits),
                ("unireward_feature_cache_misses_total", "Media encoded.", s.cache_misses),
                ("unireward_cancelled_total", "Requests dropped before their answer because the client went away.", s.cancelled),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
            }
            let _ = writeln!(
                out,
                "# HELP unireward_feature_cache_bytes Bytes of cached features.\n# TYPE unireward_feature_cache_bytes gauge\nunireward_feature_cache_bytes {}",
                s.cache_bytes
            );
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_as_prometheus_text() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200, Duration::from_millis(30));
        m.request("/v1/chat/completions", 200, Duration::from_millis(300));
        m.request("/v1/score", 429, Duration::from_millis(1));
        m.batch(3);
        m.tokens(100, 7);
        let text = m.render();
        assert!(text
            .contains("unireward_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"));
        assert!(text.contains("unireward_requests_total{route=\"/v1/score\",status=\"429\"} 1"));
        assert!(text.contains(
            "unireward_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "unireward_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.5\"} 2"
        ));
        assert!(text.contains("unireward_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("unireward_batch_size_count 1"));
        assert!(text.contains("unireward_generated_tokens_total 7"));
    }
}
