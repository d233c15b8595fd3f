//! The order examples are visited in: a stream of epochs, each a permutation of the data set
//! drawn from the seed and the epoch number alone. Any step's examples follow from
//! (seed, step), so a resumed run visits exactly what the uninterrupted one would have, with
//! no generator state to save.

use unireward_models::splitmix64::SplitMix64;

/// Uniform in 0..n (n > 0) from `rng`, by rejection so that no value is favoured.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataOrder {
    len: usize,
    seed: u64,
    shuffle: bool,
    cached: Option<(usize, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(len: usize, seed: u64, shuffle: bool) -> Self {
        Self {
            len,
            seed,
            shuffle,
            cached: None,
        }
    }

    /// Epoch `epoch`'s order of the examples 0..len (Fisher–Yates).
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if !self.shuffle {
            return order;
        }
        let mut rng = SplitMix64(self.seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for i in (1..order.len()).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    /// The example at position `k` of the endless stream of epochs.
    pub fn example(&mut self, k: usize) -> usize {
        let (epoch, pos) = (k / self.len, k % self.len);
        match &self.cached {
            Some((e, perm)) if *e == epoch => perm[pos],
            _ => {
                let perm = self.permutation(epoch);
                let ex = perm[pos];
                self.cached = Some((epoch, perm));
                ex
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_that_depends_on_seed_and_epoch() {
        let order = DataOrder::new(50, 7, true);
        let (a, b) = (order.permutation(0), order.permutation(1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, DataOrder::new(50, 7, true).permutation(0));
        assert_ne!(a, DataOrder::new(50, 8, true).permutation(0));
        assert_eq!(
            DataOrder::new(5, 7, false).permutation(3),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn stream_walks_epochs_in_order() {
        let mut order = DataOrder::new(4, 1, true);
        let second = order.permutation(1);
        let got: Vec<usize> = (4..8).map(|k| order.example(k)).collect();
        assert_eq!(got, second);
    }
}
