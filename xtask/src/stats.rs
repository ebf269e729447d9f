//! The arithmetic of the figures: medians, rates, and the load generators' reports read.

use anyhow::{Context, Result};

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// a / b, or NaN when b is 0 (a ratio with nothing to compare to).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// An integer figure with thousands separators: 41347.2 → "41,347".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// What one wrk run reports.
#[derive(Debug, PartialEq)]
pub struct Wrk {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: Option<String>,
}

/// Reads `wrk --latency`'s report.
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let requests_per_s = after("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk: no Requests/sec")?;
    let latency = |p: &str| -> Result<f64> {
        let v = after(&format!("{p}%")).with_context(|| format!("wrk: no {p}% latency"))?;
        duration_ms(v).with_context(|| format!("wrk: {p}% latency {v:?}"))
    };
    Ok(Wrk {
        requests_per_s,
        p50_ms: latency("50")?,
        p99_ms: latency("99")?,
        non_2xx: after("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        socket_errors: after("Socket errors:").map(str::to_string),
    })
}

/// wrk's durations ("340.00us", "11.90ms", "1.20s") in milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// pgbench's report: (transactions per second, average latency in ms).
pub fn parse_pgbench(out: &str) -> Result<(f64, f64)> {
    let field = |prefix: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
    };
    Ok((
        field("tps = ").context("pgbench: no tps")?,
        field("latency average = ").context("pgbench: no latency average")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(41347.4), "41,347");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1300.0), "1,300");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn reads_a_wrk_report() {
        let out = "Running 15s test @ http://127.0.0.1:18180/api/x
  2 threads and 16 connections
  Latency Distribution
     50%  340.00us
     75%    1.00ms
     90%    1.50ms
     99%    2.26ms
  620000 requests in 15.00s, 200.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:  41347.20
Transfer/sec:     13.33MB";
        let w = parse_wrk(out).expect("a report");
        assert_eq!(w.requests_per_s, 41347.2);
        assert!((w.p50_ms - 0.34).abs() < 1e-9);
        assert_eq!(w.p99_ms, 2.26);
        assert_eq!(w.non_2xx, 3);
        assert_eq!(
            w.socket_errors.as_deref(),
            Some("connect 0, read 1, write 0, timeout 0")
        );
    }

    #[test]
    fn reads_a_pgbench_report() {
        let out = "latency average = 0.684 ms\ninitial connection time = 12.3 ms\ntps = 23395.123 (without initial connection time)";
        assert_eq!(parse_pgbench(out).expect("a report"), (23395.123, 0.684));
    }
}
