//! Vision features of recently seen media, keyed by the content hash of their bytes, so that
//! the same image sent in several requests (a GRPO group's prompt image, a candidate judged
//! against each of the others) is encoded once. Bounded in bytes; the least recently used
//! entries go first.

use std::collections::HashMap;

use candle_core::Tensor;
use unireward_models::pack::VideoFeatures;

use super::media_inbox::MediaKey;

/// One medium's encoded, packed features, and per deep-stack level (Qwen3-VL; none for the
/// other families) its features at that level.
#[derive(Debug, Clone)]
pub enum CachedFeatures {
    Image(Tensor, Vec<Tensor>),
    Video(VideoFeatures, Vec<VideoFeatures>),
}

impl CachedFeatures {
    fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let video = |v: &VideoFeatures| match v {
            VideoFeatures::Pooled(t) => size(t),
            VideoFeatures::Frames(frames) => frames.iter().map(size).sum(),
            VideoFeatures::Timed { patches, .. } => patches.iter().map(size).sum(),
        };
        match self {
            CachedFeatures::Image(t, levels) => size(t) + levels.iter().map(size).sum::<usize>(),
            CachedFeatures::Video(v, levels) => video(v) + levels.iter().map(video).sum::<usize>(),
        }
    }
}

/// What a key is looked up as: the same bytes are a different entry as an image and as a
/// video, and when resized first (the DPO-data recipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub content: MediaKey,
    pub video: bool,
    pub resized: Option<(u32, u32)>,
}

pub struct FeatureCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<CacheKey, (CachedFeatures, u64)>,
    pub hits: u64,
    pub misses: u64,
}

impl FeatureCache {
    /// A cache of at most `budget` bytes of features (0 turns it off).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, key: &CacheKey) -> Option<CachedFeatures> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some((features, used_at)) => {
                *used_at = self.clock;
                self.hits += 1;
                Some(features.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, key: CacheKey, features: CachedFeatures) {
        let size = features.bytes();
        if size > self.budget {
            return;
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.insert(key, (features, self.clock)) {
            self.used -= old.bytes();
        }
        self.used += size;
        while self.used > self.budget {
            // Entries are few (hundreds at most within a budget of features), so a scan for
            // the oldest costs nothing next to one vision encoding.
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((gone, _)) = self.entries.remove(&oldest) {
                self.used -= gone.bytes();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn key(b: u8) -> CacheKey {
        CacheKey {
            content: [b; 32],
            video: false,
            resized: None,
        }
    }

    fn features(rows: usize) -> CachedFeatures {
        CachedFeatures::Image(
            Tensor::zeros((rows, 4), DType::F32, &Device::Cpu).unwrap(),
            Vec::new(),
        )
    }

    #[test]
    fn the_least_recently_used_entries_leave_when_over_the_budget() {
        // 16 bytes a row: room for 3 entries of 2 rows.
        let mut cache = FeatureCache::new(3 * 32);
        for b in 0..3 {
            cache.insert(key(b), features(2));
        }
        assert!(cache.get(&key(0)).is_some());
        cache.insert(key(3), features(2));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(1)).is_none(), "the oldest unused entry left");
        assert!(cache.get(&key(0)).is_some());
        assert!(cache.bytes() <= 3 * 32);
        cache.insert(key(9), features(100));
        assert!(
            cache.get(&key(9)).is_none(),
            "an entry over the whole budget is not kept"
        );
    }
}
