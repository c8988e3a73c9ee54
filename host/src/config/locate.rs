//! Finds where a config path such as `route[2].match.headers[0].regex` is in
//! the file's text, so that errors can name a line and column.

use toml_edit::{Document, Item};

/// Line and column (1-based) of `path` in `text`, or of its deepest part that exists.
pub(super) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let doc = Document::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    let mut best: Option<usize> = None;
    for seg in segments(path) {
        let (next, span) = match seg {
            Segment::Key(k) => {
                let key_span = item
                    .as_table_like()
                    .and_then(|t| t.key(k))
                    .and_then(|k| k.span());
                let Some(next) = item.get(k) else { break };
                (next, key_span.or_else(|| next.span()))
            }
            Segment::Index(i) => {
                let Some(next) = item.get(i) else { break };
                (next, next.span())
            }
        };
        if let Some(span) = span {
            best = Some(span.start);
        }
        item = next;
    }
    best.map(|offset| line_col(text, offset))
}

/// Line and column (1-based) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_inside_arrays_of_tables() {
        let text = "[[route]]\nname = \"a\"\n\n[[route]]\nname = \"b\"\ncluster = \"x\"\n";
        assert_eq!(locate(text, "route[1].cluster"), Some((6, 1)));
        assert_eq!(locate(text, "route[0].name"), Some((2, 1)));
        // A missing key falls back to its table.
        assert_eq!(locate(text, "route[1].nope").map(|l| l.0), Some(4));
    }

    #[test]
    fn finds_inline_values() {
        let text = "[[cluster]]\nname = \"c\"\nendpoints = [\"a\", \"b:1\"]\n";
        assert_eq!(locate(text, "cluster[0].endpoints[1]"), Some((3, 19)));
    }
}
