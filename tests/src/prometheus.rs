use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `higress_canary_requests` or `higress_canary_latency_ms_bucket`.
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether this sample is `name` with exactly the labels in `labels` (and no others).
    pub fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses every sample line of `text`; comment lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| parse_line(line).map_err(|e| e.context(format!("in line {line:?}"))))
        .collect()
}

/// The value of the sample `name{labels}` (exact label set), if present.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.is(name, labels)).map(|s| s.value)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| anyhow!("no value"))?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut consumed = None;
        loop {
            // label name
            let mut key = String::new();
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                if c == '}' && key.is_empty() {
                    consumed = Some(i + 1);
                    break;
                }
                key.push(c);
            }
            if consumed.is_some() {
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key} has no quoted value");
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => bail!("dangling escape"),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                bail!("unterminated label value");
            }
            labels.insert(key.trim().to_string(), value);
            match chars.next() {
                Some((_, ',')) => {
                    if let Some(&(i, '}')) = chars.peek() {
                        consumed = Some(i + 1);
                        break;
                    }
                }
                Some((i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                _ => bail!("expected , or }} after a label"),
            }
        }
        rest = &after_brace[consumed.unwrap_or(after_brace.len())..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse()?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_escapes_and_dots_parse() {
        let text = "# TYPE x counter\nhigress_canary_requests{rollout=\"ns/my.app\",version=\"canary\"} 12\n\
                    odd{v=\"q\\\"uote\\\\back\"} 4\nplain 7\nh_bucket{le=\"+Inf\"} 3\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(
            value(
                &samples,
                "higress_canary_requests",
                &[("rollout", "ns/my.app"), ("version", "canary")]
            ),
            Some(12.0)
        );
        assert_eq!(value(&samples, "odd", &[("v", "q\"uote\\back")]), Some(4.0));
        assert_eq!(value(&samples, "plain", &[]), Some(7.0));
        assert_eq!(value(&samples, "h_bucket", &[("le", "+Inf")]), Some(3.0));
    }
}
