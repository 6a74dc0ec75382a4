//! Medians and spreads: every figure the bench reports is the median of its rounds
//! with their minimum and maximum next to it.
use serde::{Deserialize, Serialize};

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One figure over the rounds: median, min, max, and each round's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: Option<f64>,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    /// A round that measured nothing is NaN (`null` in JSON).
    #[serde(deserialize_with = "runs_or_nan")]
    pub(crate) runs: Vec<f64>,
}

/// JSON has no NaN: serde_json writes it as `null`; read `null` back as NaN.
fn runs_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Spread {
    pub(crate) fn of(runs: impl IntoIterator<Item = f64>) -> Self {
        let runs: Vec<f64> = runs.into_iter().collect();
        let ok: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
        Self {
            median: finite(median(&ok)),
            min: ok.iter().copied().reduce(f64::min),
            max: ok.iter().copied().reduce(f64::max),
            runs,
        }
    }

    /// `12.3 (11.9–13.0)` with `digits` decimals; `–` when nothing was measured.
    pub(crate) fn show(&self, digits: usize) -> String {
        match (self.median, self.min, self.max) {
            (Some(m), Some(lo), Some(hi)) if self.runs.len() > 1 => {
                format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
            }
            (Some(m), _, _) => format!("{m:.digits$}"),
            _ => "–".into(),
        }
    }
}

/// A number with `digits` decimals, `–` when absent or not finite.
pub(crate) fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

/// `1 234 567`.
pub(crate) fn thousands(x: Option<f64>) -> String {
    let Some(x) = x.filter(|x| x.is_finite()) else {
        return "–".into();
    };
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::from(sign);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_formatting() {
        let s = Spread::of([3.0, 1.0, f64::NAN, 2.0]);
        assert_eq!((s.median, s.min, s.max), (Some(2.0), Some(1.0), Some(3.0)));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([]).show(0), "–");
        assert_eq!(thousands(Some(1234567.0)), "1 234 567");
        assert_eq!(thousands(Some(-1234.0)), "-1 234");
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        // Through JSON and back: a NaN round stays a round that measured nothing.
        let back: Spread = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.runs.len(), 4);
        assert!(back.runs[2].is_nan());
        assert_eq!(back.show(1), s.show(1));
    }
}
