//! Reading samples out of a Prometheus text exposition (a `/metrics` page), for the tests that
//! check kubetrail's counters and gauges. Every binary and the receiver expose the same format,
//! so one reader serves all their tests instead of a line filter in each.

/// Whether the sample line `line` is of metric `name` and carries every label in `labels`
/// (exact key and value); the sample's value when it does.
fn sample(line: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    if line.starts_with('#') {
        return None;
    }
    let rest = line.strip_prefix(name)?;
    let (label_set, value) = if let Some(inner) = rest.strip_prefix('{') {
        let end = inner.rfind('}')?;
        (&inner[..end], &inner[end + 1..])
    } else if rest.starts_with(' ') {
        ("", rest)
    } else {
        // Another metric whose name starts with `name`.
        return None;
    };
    let wrapped = format!(",{label_set},");
    let has_all = labels
        .iter()
        .all(|(k, v)| wrapped.contains(&format!(",{k}=\"{v}\",")));
    if !has_all {
        return None;
    }
    value.split_whitespace().next()?.parse().ok()
}

/// The value of the first sample of metric `name` (exactly that name, with or without labels)
/// whose labels include every `(key, value)` of `labels`; `None` when there is none.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| sample(l, name, labels))
}

/// The sum of every sample of metric `name` whose labels include every `(key, value)` of
/// `labels` (a counter summed over its other labels); 0 when there is none.
pub fn prometheus_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines().filter_map(|l| sample(l, name, labels)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP kubetrail_events_accepted_total Events accepted.\n\
        # TYPE kubetrail_events_accepted_total counter\n\
        kubetrail_events_accepted_total{cluster=\"a\",source=\"x\"} 3\n\
        kubetrail_events_accepted_total{cluster=\"a\",source=\"y\"} 4\n\
        kubetrail_events_accepted_total{cluster=\"ab\"} 100\n\
        kubetrail_events_accepted_total_other{cluster=\"a\"} 1000\n\
        kubetrail_connections_open 2\n\
        kubetrail_http_requests_total{path=\"/audit/{cluster}\",code=\"200\"} 5\n";

    #[test]
    fn finds_samples_by_name_and_labels() {
        let name = "kubetrail_events_accepted_total";
        assert_eq!(prometheus_value(TEXT, name, &[("cluster", "a")]), Some(3.0));
        assert_eq!(
            prometheus_value(TEXT, name, &[("cluster", "a"), ("source", "y")]),
            Some(4.0)
        );
        assert_eq!(prometheus_value(TEXT, name, &[("cluster", "b")]), None);
        assert_eq!(prometheus_sum(TEXT, name, &[("cluster", "a")]), 7.0);
        assert_eq!(prometheus_sum(TEXT, name, &[]), 107.0);
        assert_eq!(prometheus_sum(TEXT, "kubetrail_missing", &[]), 0.0);
        assert_eq!(
            prometheus_value(TEXT, "kubetrail_connections_open", &[]),
            Some(2.0)
        );
        assert_eq!(
            prometheus_value(
                TEXT,
                "kubetrail_http_requests_total",
                &[("path", "/audit/{cluster}"), ("code", "200")]
            ),
            Some(5.0)
        );
    }
}
