//! Durations and sizes as config types, written the way operators write them
//! (`"250ms"`, `"64KiB"`), never as bare integers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time written as `"250ms"`, `"10s"`, `"1m 30s"` (humantime syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Builds a duration from milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// Builds a duration from seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                format!("invalid duration {s:?}: {e} (write it like \"250ms\", \"10s\" or \"2m\")")
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes written as `"512"`, `"64KiB"`, `"10MiB"`, `"1GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// Builds a size from kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    /// Builds a size from mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let hint = "write it like \"512\", \"64KiB\" or \"10MiB\"";
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: no number at the start ({hint})"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" | "K" | "k" => 1 << 10,
            "MB" => 1000 * 1000,
            "MiB" | "M" => 1 << 20,
            "GB" => 1000 * 1000 * 1000,
            "GiB" | "G" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} ({hint})"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("64KiB".parse::<Size>().unwrap(), Size(65536));
        assert_eq!("10MiB".parse::<Size>().unwrap(), Size(10 << 20));
        assert_eq!("1KB".parse::<Size>().unwrap(), Size(1000));
        assert_eq!("512".parse::<Size>().unwrap(), Size(512));
        assert!(
            "12 parsecs"
                .parse::<Size>()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!("KiB".parse::<Size>().unwrap_err().contains("no number"));
        assert_eq!(Size(65536).to_string(), "64KiB");
    }

    #[test]
    fn durations_parse_like_operators_write_them() {
        assert_eq!(
            "250ms".parse::<Duration>().unwrap().get(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!("2m".parse::<Duration>().unwrap().get().as_secs(), 120);
        assert!("soon".parse::<Duration>().unwrap_err().contains("250ms"));
    }
}
