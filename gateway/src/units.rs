//! Human-readable durations ("10s", "250ms", "off") and sizes ("4096KiB")
//! for the configuration file, and lists that may be written as one value.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A duration written as a number with a unit: `ms`, `s`, `m`, `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    /// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} has no unit (use ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("duration {s:?} does not start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => {
                return Err(format!("duration {s:?} has unknown unit {unit:?} (use ms, s, m or h)"));
            }
        };
        Ok(Span(d))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(de::Error::custom)
    }
}

/// `"off"` → `None`, else a [`Span`]; for serde's `deserialize_with`.
pub fn off_or_span<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" { Ok(None) } else { Span::parse(&s).map(Some).map_err(de::Error::custom) }
}

/// A list written as a list or, for one item, as a plain value
/// (`clamd = "unix:/x"` or `clamd = ["unix:/x", "tcp:h:3310"]`).
pub fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

/// A byte count written as a number with an optional unit: `B`, `KiB`,
/// `MiB`, `GiB` (and `KB`/`MB`/`GB`, which mean the same powers of 1024, as
/// firewall admins commonly write them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parses `"1MiB"`, `"4096KiB"`, `"512"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("size {s:?} does not start with a whole number"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            other => {
                return Err(format!("size {s:?} has unknown unit {other:?} (use B, KiB, MiB or GiB)"));
            }
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(Span::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Span::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(Span::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Span::parse("10").is_err());
        assert!(Span::parse("10parsecs").is_err());
        assert!(Span::parse("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("4096KiB").unwrap().0, 4096 * 1024);
        assert_eq!(Size::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(Size::parse("512").unwrap().0, 512);
        assert!(Size::parse("1TiB").is_err());
        assert!(Size::parse("99999999999999GiB").is_err());
    }
}
