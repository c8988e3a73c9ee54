//! SPIFFE IDs: `spiffe://TRUST_DOMAIN/PATH`, checked as the SPIFFE spec says.

/// A checked SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    text: String,
    domain_len: usize,
}

impl SpiffeId {
    /// Parses `s`; the error says which rule it breaks.
    pub fn parse(s: &str) -> Result<SpiffeId, String> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{s:?} is not a SPIFFE ID: it must start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() {
            return Err(format!(
                "{s:?}: the trust domain is missing (spiffe://example.org/...)"
            ));
        }
        if let Some(c) = domain.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(format!(
                "{s:?}: the trust domain may hold lowercase letters, digits, '.', '-' and '_' only, not {c:?}"
            ));
        }
        if !path.is_empty() {
            for seg in path.split('/') {
                if seg.is_empty() {
                    return Err(format!(
                        "{s:?}: the path has an empty segment (// or a trailing /)"
                    ));
                }
                if seg == "." || seg == ".." {
                    return Err(format!("{s:?}: the path may not hold '.' or '..' segments"));
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(format!(
                        "{s:?}: path segments may hold letters, digits, '.', '-' and '_' only, not {c:?}"
                    ));
                }
            }
        }
        Ok(SpiffeId {
            text: s.to_string(),
            domain_len: domain.len(),
        })
    }

    /// The trust domain (`example.org`).
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len().."spiffe://".len() + self.domain_len]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `id` matches an allowed-identity `pattern`: the exact ID, or a
/// prefix ending in `/*` (`spiffe://example.org/ns/default/*`), or `*` for any.
pub fn matches(pattern: &str, id: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => id.starts_with(prefix) && id.len() > prefix.len(),
        _ => pattern == id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits() {
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.as_str(), "spiffe://example.org/ns/default/sa/web");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().trust_domain(), "td");
    }

    #[test]
    fn refuses_what_the_spec_forbids() {
        for (bad, why) in [
            ("http://example.org/x", "must start with spiffe://"),
            ("spiffe:///x", "trust domain is missing"),
            ("spiffe://Example.org/x", "lowercase"),
            ("spiffe://example.org/a//b", "empty segment"),
            ("spiffe://example.org/a/", "empty segment"),
            ("spiffe://example.org/a/../b", "'..'"),
            ("spiffe://example.org/a b", "not ' '"),
        ] {
            let e = SpiffeId::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn patterns() {
        let id = "spiffe://example.org/ns/default/sa/web";
        assert!(matches(id, id));
        assert!(matches("spiffe://example.org/ns/default/*", id));
        assert!(matches("*", id));
        assert!(!matches("spiffe://example.org/ns/other/*", id));
        assert!(!matches("spiffe://example.org/ns/default/sa/we", id));
        assert!(!matches(
            "spiffe://example.org/ns/default/sa/web*",
            "spiffe://example.org/ns/default/sa/webx"
        ));
    }
}
