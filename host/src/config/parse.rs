//! Flag values: sizes checked with the flag's name, and one-line messages.

use super::ConfigError;
use crate::units::parse_size;

/// A size flag's value, if given: `Err` names the flag.
pub fn size_flag(flag: &'static str, v: &Option<String>) -> Result<Option<u64>, ConfigError> {
    v.as_deref()
        .map(|m| parse_size(m).ok_or_else(|| ConfigError::Size(flag, m.to_string())))
        .transpose()
}

/// A message of several lines as one.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
