//! `--partition`: which shard of the cases this machine runs.

use super::ConfigError;

/// `--partition count:K/N` or `hash:K/N`: shard K (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub by_hash: bool,
    pub shard: u64,
    pub total: u64,
}

impl Partition {
    pub fn parse(spec: &str) -> Result<Partition, ConfigError> {
        let bad = || ConfigError::Partition(spec.to_string());
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        let by_hash = match kind {
            "count" => false,
            "hash" => true,
            _ => return Err(bad()),
        };
        let (k, n) = rest.split_once('/').ok_or_else(bad)?;
        let (shard, total): (u64, u64) =
            (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if total == 0 || shard == 0 || shard > total {
            return Err(bad());
        }
        Ok(Partition {
            by_hash,
            shard,
            total,
        })
    }

    /// Whether the case at `index` (in the order of the whole unsharded
    /// run) of `package` named `case` belongs to this shard. By count:
    /// every Nth case, so shards get equal numbers; by hash: by the name
    /// alone, so a case stays in its shard as others come and go.
    pub fn selects(&self, index: usize, package: &str, case: &str) -> bool {
        let slot = if self.by_hash {
            let d = cachet_runtime::Sha256Digest::of(format!("{package}\0{case}").as_bytes());
            u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")) % self.total
        } else {
            index as u64 % self.total
        };
        slot == self.shard - 1
    }
}
