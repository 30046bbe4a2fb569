//! A seeded xorshift64* generator: fits, simulations and tests that must give the same result
//! for the same seed, without a dependency; and samples of slots by their hash.

/// xorshift64* (Vigna 2016). Not for anything secret.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// About `n` of `of` slots, each in the sample when its hash falls under `n` in `of`: a sample
/// independent of the order the slots come in (neither bunched at a list's start nor every
/// k-th slot, which a catalog's items alike every k slots would defeat) and the same for the
/// same slots every time. A hash (three multiplications) per slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotSample {
    under: u32,
}

impl SlotSample {
    pub fn new(n: usize, of: usize) -> Self {
        let share = n as f64 / of.max(1) as f64;
        Self {
            under: (share.min(1.0) * f64::from(u32::MAX)) as u32,
        }
    }

    pub fn holds(&self, slot: u32) -> bool {
        slot_hash(slot) <= self.under
    }
}

/// A slot's hash: murmur3's 32-bit finaliser (spreads neighbouring slots over all of u32).
fn slot_hash(slot: u32) -> u32 {
    let mut h = slot.wrapping_mul(0x9E37_79B9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_in_range() {
        let (mut a, mut b) = (XorShift::new(5), XorShift::new(5));
        let draws: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(
            draws
                .iter()
                .zip((0..1000).map(|_| b.unit()))
                .all(|(x, y)| *x == y)
        );
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!(
            (0..1000)
                .map(|_| a.uniform())
                .all(|x| (-1.0..1.0).contains(&x))
        );
    }
}
