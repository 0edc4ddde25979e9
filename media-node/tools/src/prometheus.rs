//! Reading a node's Prometheus text exposition: a metric's samples summed, and a
//! histogram's quantile as the bound of the bucket that holds it.

/// Sum of every sample of a Prometheus metric whose line starts with `name` (labels
/// included in `name` narrow it down).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| !l.starts_with('#') && l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The upper bound of the bucket holding quantile `q` of a Prometheus histogram.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.iter().find(|b| b.1 >= q * total).map_or(f64::NAN, |b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# HELP x\nmedia_ports{state=\"free\"} 3\nmedia_ports{state=\"allocated\"} 2\nother 9\n";
        assert_eq!(metric_value(text, "media_ports"), 5.0);
        assert_eq!(metric_value(text, "media_ports{state=\"free\"}"), 3.0);
        assert_eq!(metric_value(text, "missing"), 0.0);
    }

    #[test]
    fn histogram_quantiles_come_from_bucket_bounds() {
        let text = "x_bucket{le=\"0.001\"} 90\nx_bucket{le=\"0.002\"} 99\nx_bucket{le=\"0.005\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "x", 0.5), 0.001);
        assert_eq!(histogram_quantile(text, "x", 0.99), 0.002);
        assert_eq!(histogram_quantile(text, "x", 1.0), 0.005);
    }
}
