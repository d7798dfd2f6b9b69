//! Kubernetes resource quantities ("100m", "0.5", "128Mi", "1e3").
//!
//! The grammar and rounding follow apimachinery's `resource.Quantity`: an
//! optional sign, digits with an optional decimal point, then a suffix that is
//! a binary SI unit (`Ki`..`Ei`), a decimal SI unit (`n`, `u`, `m`, `k`, `M`,
//! `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). Kubernetes rounds a
//! parsed value up to whole nano units, so every quantity is an exact integer
//! count of nanos; that is how it is stored here, which keeps sums exact.

use std::fmt;
use std::str::FromStr;

/// Nano units in one unit.
const NANOS: i128 = 1_000_000_000;

/// Largest magnitude kept, in nanos: `i64::MAX` units (Kubernetes caps binary
/// quantities there; nothing a scheduler compares is larger).
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS;

/// Significant decimal digits kept exactly while parsing (fits in a u128).
const MAX_DIGITS: u32 = 38;

/// A parsed quantity: a whole number of nano units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantityError {
    /// The string does not have the shape `[sign]digits[.digits][suffix]`.
    Format(String),
    /// The suffix is not a known unit or exponent.
    Suffix(String),
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::Format(s) => write!(f, "quantity {s:?} is not a number with a unit"),
            QuantityError::Suffix(s) => write!(f, "quantity {s:?} has an unknown unit"),
        }
    }
}

impl std::error::Error for QuantityError {}

impl Quantity {
    /// The zero quantity.
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    /// A quantity of `milli` thousandths of a unit.
    pub fn from_milli(milli: i64) -> Quantity {
        Quantity {
            nanos: i128::from(milli) * 1_000_000,
        }
    }

    /// A quantity of `units` whole units.
    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            nanos: i128::from(units) * NANOS,
        }
    }

    /// The exact value in nano units.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// Whole units, rounded away from zero (Kubernetes `Quantity.Value`).
    pub fn value(self) -> i64 {
        scale_up(self.nanos, NANOS)
    }

    /// Thousandths, rounded away from zero (Kubernetes `Quantity.MilliValue`).
    pub fn milli_value(self) -> i64 {
        scale_up(self.nanos, 1_000_000)
    }

    /// The sum, saturating at the largest kept magnitude.
    pub fn saturating_add(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: (self.nanos + other.nanos).clamp(-MAX_NANOS, MAX_NANOS),
        }
    }
}

/// `nanos / per`, rounded away from zero, clamped to i64.
fn scale_up(nanos: i128, per: i128) -> i64 {
    let magnitude = nanos.unsigned_abs().div_ceil(per as u128);
    let magnitude = i64::try_from(magnitude).unwrap_or(i64::MAX);
    if nanos < 0 {
        -magnitude
    } else {
        magnitude
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain decimal units; used in messages, never parsed back by Kubernetes.
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let (whole, frac) = (abs / NANOS as u128, abs % NANOS as u128);
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let frac = format!("{frac:09}");
            write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// The unit a suffix stands for: `2^binary * 10^decimal`.
struct Unit {
    binary: u32,
    decimal: i64,
}

fn unit(suffix: &str) -> Option<Unit> {
    let decimal = |decimal| Some(Unit { binary: 0, decimal });
    let binary = |binary| Some(Unit { binary, decimal: 0 });
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            // A decimal exponent: "e" or "E" and a signed integer ("E" alone is exa).
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exponent: i64 = rest.parse().ok()?;
            if i32::try_from(exponent).is_err() {
                return None;
            }
            decimal(exponent)
        }
    }
}

/// Characters that may start a suffix (apimachinery scans the same set).
fn is_suffix_char(b: u8) -> bool {
    b"eEinumkKMGTP".contains(&b)
}

/// Parse a Kubernetes quantity string.
pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
    let format_err = || QuantityError::Format(s.to_owned());
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(format_err());
    }
    let mut pos = 0;
    let negative = match bytes[0] {
        b'-' => {
            pos = 1;
            true
        }
        b'+' => {
            pos = 1;
            false
        }
        _ => false,
    };

    // The number: digits, an optional point, digits. Apimachinery accepts an
    // empty integer or fraction part ("5.", ".5", even "." and a bare sign,
    // which are zero); so does this.
    let mut mantissa: u128 = 0;
    let mut significant = 0u32;
    let mut exp10: i64 = 0;
    // True when a non-zero digit was dropped beyond MAX_DIGITS.
    let mut inexact = false;
    let mut in_fraction = false;
    while pos < bytes.len() {
        let b = bytes[pos];
        if b == b'.' && !in_fraction {
            in_fraction = true;
            pos += 1;
            continue;
        }
        if !b.is_ascii_digit() {
            break;
        }
        let digit = u128::from(b - b'0');
        if mantissa == 0 && digit == 0 {
            if in_fraction {
                exp10 -= 1;
            }
        } else if significant < MAX_DIGITS {
            mantissa = mantissa * 10 + digit;
            significant += 1;
            if in_fraction {
                exp10 -= 1;
            }
        } else {
            inexact |= digit != 0;
            if !in_fraction {
                exp10 += 1;
            }
        }
        pos += 1;
    }

    // The suffix: letters from the unit set, then an optional sign and digits.
    let suffix_start = pos;
    while pos < bytes.len() && is_suffix_char(bytes[pos]) {
        pos += 1;
    }
    if pos < bytes.len() && (bytes[pos] == b'+' || bytes[pos] == b'-') {
        pos += 1;
    }
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos != bytes.len() {
        return Err(format_err());
    }
    let suffix = &s[suffix_start..];
    let unit = unit(suffix).ok_or_else(|| QuantityError::Suffix(s.to_owned()))?;

    let magnitude = scaled_nanos(mantissa, inexact, exp10 + unit.decimal, unit.binary);
    Ok(Quantity {
        nanos: if negative { -magnitude } else { magnitude },
    })
}

/// `ceil(mantissa(+inexact) * 2^binary * 10^(exp10 + 9))`, clamped to MAX_NANOS.
fn scaled_nanos(mantissa: u128, inexact: bool, exp10: i64, binary: u32) -> i128 {
    if mantissa == 0 {
        return 0;
    }
    let max = MAX_NANOS as u128;
    let Some(mut n) = mantissa.checked_mul(1u128 << binary) else {
        return MAX_NANOS;
    };
    let p = exp10 + 9;
    if p >= 0 {
        // Dropped digits only happen past 38 significant ones: far above MAX.
        for _ in 0..p {
            n = match n.checked_mul(10) {
                Some(v) if v <= max => v,
                _ => return MAX_NANOS,
            };
        }
        return n.min(max) as i128;
    }
    // Divide by 10^-p, rounding up; anything below one nano rounds up to one.
    if -p > i64::from(MAX_DIGITS) {
        return 1;
    }
    let divisor = 10u128.pow((-p) as u32);
    let (q, r) = (n / divisor, n % divisor);
    let q = if r != 0 || inexact { q + 1 } else { q };
    q.min(max) as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q(".5").milli_value(), 500);
        assert_eq!(q("5.").milli_value(), 5000);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("2").value(), 2);
        assert_eq!(q("1500m").value(), 2, "value rounds up");
        assert_eq!(q("0.1m").milli_value(), 1, "milli value rounds up");
        assert_eq!(q("250000u").milli_value(), 250);
        assert_eq!(q("100n").milli_value(), 1);
        assert_eq!(q("+3").milli_value(), 3000);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(q("128Mi").value(), 128 * 1024 * 1024);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("1.5Gi").value(), 3 * 512 * 1024 * 1024);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("1k").value(), 1000);
        assert_eq!(q("2T").value(), 2_000_000_000_000);
        assert_eq!(q("1Ei").value(), 1 << 60);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("1m").value(), 1, "a thousandth of a byte is one byte");
        assert_eq!(q("0.3Ki").value(), 308, "307.2 rounds up");
    }

    #[test]
    fn exponents() {
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("1e+3").value(), 1000);
        assert_eq!(q("12e-3").milli_value(), 12);
        assert_eq!(q("1.5e2").value(), 150);
        assert_eq!(q("1e-12").milli_value(), 1);
        assert_eq!(q("1e-30").nanos(), 1);
    }

    #[test]
    fn zero_and_sign() {
        assert_eq!(q("0"), Quantity::ZERO);
        assert_eq!(q("000"), Quantity::ZERO);
        assert_eq!(q("0.000"), Quantity::ZERO);
        assert_eq!(q("0Mi"), Quantity::ZERO);
        // Apimachinery reads these as zero too.
        assert_eq!(q("."), Quantity::ZERO);
        assert_eq!(q("-"), Quantity::ZERO);
        assert_eq!(q("-1").value(), -1);
        assert_eq!(q("-1.5").value(), -2, "rounds away from zero");
        assert_eq!(q("-100m").milli_value(), -100);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", " 1", "1 ", "1K", "1mi", "1e", "1e3.5", "1.1.1", "abc", "1Mi3", "1KiB", "1ee3",
            "1e+", "0x10", "1,5", "--1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(parse("1K"), Err(QuantityError::Suffix(_))));
        assert!(matches!(parse("1 "), Err(QuantityError::Format(_))));
    }

    #[test]
    fn many_digits_stay_exact_or_round_up() {
        assert_eq!(
            q("0.1000000000000000000000000000000000000000001").milli_value(),
            101
        );
        assert_eq!(q("0.100000000").milli_value(), 100);
        assert_eq!(
            q("0.0000000000000000000000000000000000000000000000001").nanos(),
            1
        );
        assert_eq!(
            q("00000000000000000000000000000000000000000000012").value(),
            12
        );
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(q("8Ei").value(), i64::MAX);
        assert_eq!(q("1e40").value(), i64::MAX);
        assert_eq!(
            q("99999999999999999999999999999999999999999999").value(),
            i64::MAX
        );
        assert_eq!(q("-1e40").value(), -i64::MAX);
    }

    #[test]
    fn sums_are_exact_before_rounding() {
        let half = q("0.5m");
        assert_eq!(half.milli_value(), 1);
        assert_eq!(half.saturating_add(half).milli_value(), 1);
        assert_eq!(Quantity::from_milli(1500), q("1.5"));
        assert_eq!(Quantity::from_units(2), q("2000m"));
    }

    #[test]
    fn display_is_plain_decimal() {
        assert_eq!(q("1500m").to_string(), "1.5");
        assert_eq!(q("2Ki").to_string(), "2048");
        assert_eq!(q("-1n").to_string(), "-0.000000001");
    }
}
