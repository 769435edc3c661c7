//! Random bytes from a seed, for `--hermetic` runs: SHA-256 of the seed and
//! a block counter, so the same seed gives the same stream on every machine
//! and a guest's hash-map seeds, temp names and shuffles repeat exactly.
//! Not for secrets: a test that needs real entropy should not run hermetic.

use sha2::{Digest as _, Sha256};

#[derive(Debug)]
pub(crate) struct SeededRandom {
    seed: u64,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        SeededRandom {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(b"cachet-hermetic-random");
                h.update(self.seed.to_le_bytes());
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_whatever_the_reads() {
        let mut a = SeededRandom::new(7);
        let mut whole = [0u8; 100];
        a.fill(&mut whole);
        let mut b = SeededRandom::new(7);
        let mut parts = [0u8; 100];
        for chunk in parts.chunks_mut(13) {
            b.fill(chunk);
        }
        assert_eq!(whole, parts);
        let mut c = SeededRandom::new(8);
        let mut other = [0u8; 100];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }
}
