//! Key/value cache for incremental decoding: one (k, v) pair per layer, grown along the
//! sequence axis.

use candle_core::Tensor;

use crate::Result;

#[derive(Default, Clone)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends this step's keys/values [B, kv_heads, T, hd] and returns the whole history.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.kv {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.kv = Some(kv.clone());
        Ok(kv)
    }

    fn len(&self) -> usize {
        self.kv
            .as_ref()
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }
}

/// Cloning a cache is cheap (tensors are shared), which lets several continuations branch
/// from one prompt's cache.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// Tokens already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map(LayerCache::len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same history for `n` sequences: a prompt's cache shared by `n` continuations.
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = match &l.kv {
                    Some((k, v)) => Some((repeat_rows(k, n)?, repeat_rows(v, n)?)),
                    None => None,
                };
                Ok(LayerCache { kv })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Sequence `b` of a batched cache, cut to its first `len` positions (its real tokens
    /// when the batch was right-padded).
    pub fn select(&self, b: usize, len: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = match &l.kv {
                    Some((k, v)) => Some((
                        k.narrow(0, b, 1)?.narrow(2, 0, len)?,
                        v.narrow(0, b, 1)?.narrow(2, 0, len)?,
                    )),
                    None => None,
                };
                Ok(LayerCache { kv })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The sequences `rows` of a batched cache, each keeping only the cached positions
    /// `slots` (in order): finished sequences leave a running batch, and positions that no
    /// remaining sequence uses go with them.
    pub fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Self> {
        let (len, batch) = (self.len(), self.batch());
        if let Some(bad) = rows.iter().find(|&&b| b >= batch) {
            return Err(crate::Error::Input(format!(
                "row {bad} of a cache of {batch} sequences"
            )));
        }
        if let Some(bad) = slots.iter().find(|&&s| s >= len) {
            return Err(crate::Error::Input(format!(
                "position {bad} of a cache of {len}"
            )));
        }
        let all_rows = rows.iter().copied().eq(0..batch);
        let all_slots = slots.iter().copied().eq(0..len);
        let pick = |t: &Tensor| -> Result<Tensor> {
            let device = t.device();
            let t = match all_rows {
                true => t.clone(),
                false => t.index_select(&index(rows, device)?, 0)?,
            };
            Ok(match all_slots {
                true => t,
                false => t.index_select(&index(slots, device)?, 2)?,
            })
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = match &l.kv {
                    Some((k, v)) => Some((pick(k)?, pick(v)?)),
                    None => None,
                };
                Ok(LayerCache { kv })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// `other`'s sequences join this batch after its own. The shorter history is padded at
    /// its end to the longer's length: padding positions that the sequences there must not
    /// attend to (their caller masks them).
    pub fn append(&mut self, other: &KvCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            return Err(crate::Error::Input(format!(
                "a cache of {} layers joins one of {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        let len = self.len().max(other.len());
        let pad = |t: &Tensor| -> Result<Tensor> {
            let n = t.dim(2)?;
            Ok(match n < len {
                true => t.pad_with_zeros(2, 0, len - n)?,
                false => t.clone(),
            })
        };
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.kv = match (&mine.kv, &theirs.kv) {
                (Some((k, v)), Some((ok, ov))) => Some((
                    Tensor::cat(&[pad(k)?, pad(ok)?], 0)?,
                    Tensor::cat(&[pad(v)?, pad(ov)?], 0)?,
                )),
                (None, Some(kv)) => Some(kv.clone()),
                (Some(kv), None) => Some(kv.clone()),
                (None, None) => None,
            };
        }
        Ok(())
    }

    /// Sequences in the batch (0 before the first call).
    pub fn batch(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.kv.as_ref())
            .and_then(|(k, _)| k.dim(0).ok())
            .unwrap_or(0)
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }
}

/// Indices as a u32 tensor on `device`, for `index_select`.
fn index(ids: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let n = ids.len();
    Ok(Tensor::from_vec(ids, n, device)?)
}

/// [1, ...] → [n, ...].
fn repeat_rows(t: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = t.dims().to_vec();
    if dims.first() != Some(&1) {
        return Err(crate::Error::Input(format!(
            "a cache can be shared only from one sequence, it holds {:?}",
            dims
        )));
    }
    dims[0] = n;
    Ok(t.broadcast_as(dims)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// A one-layer cache of `batch` sequences x `len` positions (one head of width 1) whose
    /// keys are `base` + 10·row + position and values their negatives.
    fn cache(batch: usize, len: usize, base: f32) -> KvCache {
        let keys: Vec<f32> = (0..batch)
            .flat_map(|b| (0..len).map(move |p| base + (10 * b + p) as f32))
            .collect();
        let k = Tensor::from_vec(keys, (batch, 1, len, 1), &Device::Cpu).unwrap();
        let mut c = KvCache::new(1);
        c.layer(0).append(&k, &k.neg().unwrap()).unwrap();
        c
    }

    fn keys(c: &mut KvCache) -> Vec<Vec<f32>> {
        let (k, v) = c.layer(0).kv.clone().unwrap();
        assert_eq!(
            k.neg()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let (b, _, len, _) = k.dims4().unwrap();
        k.reshape((b, len)).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn append_pads_the_shorter_history_at_its_end_and_gather_keeps_rows_and_positions() {
        let mut running = cache(2, 3, 0.0);
        running.append(&cache(1, 5, 100.0)).unwrap();
        assert_eq!((running.batch(), running.len()), (3, 5));
        assert_eq!(
            keys(&mut running),
            [
                vec![0.0, 1.0, 2.0, 0.0, 0.0],
                vec![10.0, 11.0, 12.0, 0.0, 0.0],
                vec![100.0, 101.0, 102.0, 103.0, 104.0],
            ]
        );
        let mut kept = running.gather(&[2, 0], &[0, 2, 4]).unwrap();
        assert_eq!((kept.batch(), kept.len()), (2, 3));
        assert_eq!(
            keys(&mut kept),
            [vec![100.0, 102.0, 104.0], vec![0.0, 2.0, 0.0]]
        );
        let mut same = running.gather(&[0, 1, 2], &[0, 1, 2, 3, 4]).unwrap();
        assert_eq!(keys(&mut same), keys(&mut running));
        assert!(running.gather(&[3], &[0]).is_err());
        assert!(running.gather(&[0], &[5]).is_err());

        // A shorter cache joining a longer one is padded instead.
        let mut longer = cache(1, 4, 50.0);
        longer.append(&cache(1, 2, 0.0)).unwrap();
        assert_eq!(
            keys(&mut longer),
            [vec![50.0, 51.0, 52.0, 53.0], vec![0.0, 1.0, 0.0, 0.0]]
        );
        let mut empty = KvCache::new(1);
        empty.append(&cache(1, 2, 7.0)).unwrap();
        assert_eq!(keys(&mut empty), [vec![7.0, 8.0]]);
        assert!(KvCache::new(2).append(&cache(1, 2, 0.0)).is_err());
    }
}
