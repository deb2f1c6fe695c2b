//! Which key, and which operation, a client uses next.
//!
//! Keys are `bench-0` .. `bench-{N-1}`. With the uniform distribution each is
//! equally likely; with zipf, key `bench-0` is the hottest, `bench-1` the next,
//! and so on: the probability of the key of rank r falls as 1/r^s. Hot keys
//! are what make caches look good and per-key locks look bad, so a benchmark
//! needs both shapes.
//!
//! Each client owns its own chooser and random generator: nothing here is
//! shared, so choosing costs no synchronization.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution as _, Zipf};

use super::args::Distribution;

/// Every key the generator uses starts with this, so benchmark data is easy
/// to tell apart from anything else in the store.
pub const KEY_PREFIX: &str = "bench-";

/// The name of key number `index`.
pub fn key_name(index: u64) -> String {
    format!("{KEY_PREFIX}{index}")
}

/// Read or write: the two operations the generator issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
        }
    }
}

/// Picks key indices in `0..keys` from a distribution.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    Uniform {
        keys: u64,
    },
    /// rand_distr's zipf yields ranks `1..=keys` as floats.
    Zipf {
        zipf: Zipf<f64>,
    },
}

impl KeyChooser {
    /// `keys` must be at least 1 and `s` positive (as `Args::validate` ensures).
    pub fn new(distribution: Distribution, keys: u64, s: f64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipf => {
                // Only fails for s < 0 or keys < 1, which validation rules out.
                let zipf = Zipf::new(keys as f64, s).expect("validated zipf parameters");
                KeyChooser::Zipf { zipf }
            }
        }
    }

    /// The index of the next key.
    pub fn choose(&self, rng: &mut SmallRng) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.random_range(0..*keys),
            // Rank 1 is the hottest key, index 0.
            KeyChooser::Zipf { zipf } => zipf.sample(rng) as u64 - 1,
        }
    }
}

/// Decides read or write with the `--reads` percentage.
pub fn choose_op(rng: &mut SmallRng, read_pct: u32) -> OpKind {
    if rng.random_range(0..100) < read_pct {
        OpKind::Read
    } else {
        OpKind::Write
    }
}

/// The random generator of client number `client`: distinct per client, and
/// the same on every run with the same `--seed`.
pub fn client_rng(seed: u64, client: usize) -> SmallRng {
    // Spread client numbers over the seed space so neighbouring clients do
    // not get neighbouring seeds.
    SmallRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(chooser: &KeyChooser, keys: u64, draws: usize) -> Vec<u64> {
        let mut rng = client_rng(7, 0);
        let mut seen = vec![0u64; keys as usize];
        for _ in 0..draws {
            let k = chooser.choose(&mut rng);
            assert!(k < keys, "key index {k} outside 0..{keys}");
            seen[k as usize] += 1;
        }
        seen
    }

    #[test]
    fn uniform_covers_the_space_evenly() {
        let seen = counts(
            &KeyChooser::new(Distribution::Uniform, 10, 1.0),
            10,
            100_000,
        );
        // Each bucket expects 10,000; 5% slack is many standard deviations.
        for (k, n) in seen.iter().enumerate() {
            assert!((9_500..=10_500).contains(n), "key {k} drawn {n} times");
        }
    }

    #[test]
    fn zipf_is_skewed_towards_low_indices() {
        let seen = counts(&KeyChooser::new(Distribution::Zipf, 100, 1.0), 100, 100_000);
        // With s = 1 over 100 keys, rank 1 takes 1/H(100) ≈ 19% of draws and
        // rank 2 half of that.
        let share0 = seen[0] as f64 / 100_000.0;
        assert!((0.17..0.22).contains(&share0), "hottest key share {share0}");
        assert!(seen[0] > seen[1] && seen[1] > seen[9] && seen[9] > seen[99]);
    }

    #[test]
    fn a_single_key_space_always_yields_key_zero() {
        for dist in [Distribution::Uniform, Distribution::Zipf] {
            let seen = counts(&KeyChooser::new(dist, 1, 1.2), 1, 1000);
            assert_eq!(seen, vec![1000]);
        }
    }

    #[test]
    fn op_mix_follows_the_percentage() {
        let mut rng = client_rng(1, 3);
        let reads = (0..10_000)
            .filter(|_| choose_op(&mut rng, 70) == OpKind::Read)
            .count();
        assert!((6_700..7_300).contains(&reads), "{reads} reads of 10000");
        assert_eq!(choose_op(&mut rng, 0), OpKind::Write);
        assert_eq!(choose_op(&mut rng, 100), OpKind::Read);
    }

    #[test]
    fn same_seed_same_choices_different_clients_differ() {
        let chooser = KeyChooser::new(Distribution::Uniform, 1_000_000, 1.0);
        let draw = |seed, client| {
            let mut rng = client_rng(seed, client);
            (0..5).map(|_| chooser.choose(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, 0), draw(42, 0));
        assert_ne!(draw(42, 0), draw(42, 1));
    }
}
