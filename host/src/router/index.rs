//! A byte trie over routes' literal path prefixes. Looking a path up visits
//! only the routes whose literal is a prefix of it, plus the routes without
//! one (regex or no path condition), so matching stays fast with thousands
//! of routes while first-match-wins order is kept.

/// Routes indexed by their literal path prefix.
#[derive(Debug, Default)]
pub(super) struct PrefixIndex {
    nodes: Vec<Node>,
    /// Routes with no literal prefix: candidates for every path.
    always: Vec<u32>,
}

#[derive(Debug, Default)]
struct Node {
    /// (byte, child node), sorted by byte.
    children: Vec<(u8, u32)>,
    /// Routes whose literal ends here, in route order.
    routes: Vec<u32>,
}

/// What the index knows of a route's path.
pub(super) enum Literal {
    /// Every path it matches starts with this.
    Prefix(String),
    /// Nothing: a candidate for every path.
    None,
    /// Indexed elsewhere (by host); not here.
    Elsewhere,
}

/// The literal prefix every match of an anchored regex starts with, if any:
/// `^/users/[0-9]+` gives `/users/`.
pub(super) fn regex_literal(re: &str) -> Option<String> {
    const META: &str = "\\.+*?()|[]{}^$";
    let rest = re.strip_prefix('^')?;
    if re.contains('|') {
        // A top-level alternative would not start with the literal.
        return None;
    }
    let mut lit = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if META.contains(c) {
            if matches!(c, '?' | '*' | '{') {
                lit.pop();
            }
            break;
        }
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        lit.push(c);
    }
    (!lit.is_empty()).then_some(lit)
}

impl PrefixIndex {
    /// Indexes routes by what is known of their paths.
    pub(super) fn new(literals: impl Iterator<Item = Literal>) -> PrefixIndex {
        let mut index = PrefixIndex {
            nodes: vec![Node::default()],
            always: Vec::new(),
        };
        for (i, lit) in literals.enumerate() {
            match lit {
                Literal::None => index.always.push(i as u32),
                Literal::Elsewhere => {}
                Literal::Prefix(lit) => {
                    let node = index.insert(lit.as_bytes());
                    index.nodes[node].routes.push(i as u32);
                }
            }
        }
        index
    }

    fn insert(&mut self, bytes: &[u8]) -> usize {
        let mut node = 0;
        for &b in bytes {
            node = match self.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(pos) => self.nodes[node].children[pos].1 as usize,
                Err(pos) => {
                    let next = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[node].children.insert(pos, (b, next as u32));
                    next
                }
            };
        }
        node
    }

    /// Calls `visit` with each sorted list of candidate routes for `path`.
    pub(super) fn candidates(&self, path: &str, mut visit: impl FnMut(&[u32])) {
        if !self.always.is_empty() {
            visit(&self.always);
        }
        let mut node = &self.nodes[0];
        if !node.routes.is_empty() {
            visit(&node.routes);
        }
        for &b in path.as_bytes() {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(pos) => node = &self.nodes[node.children[pos].1 as usize],
                Err(_) => return,
            }
            if !node.routes.is_empty() {
                visit(&node.routes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::regex_literal;

    #[test]
    fn regex_literals_stop_before_quantifiers_and_classes() {
        assert_eq!(regex_literal("^/users/[0-9]+$").as_deref(), Some("/users/"));
        assert_eq!(regex_literal("^/ab?c").as_deref(), Some("/a"));
        assert_eq!(regex_literal("^/a.b").as_deref(), Some("/a"));
        assert_eq!(regex_literal("^/v{2}").as_deref(), Some("/"));
        assert_eq!(regex_literal("^/x\\.y").as_deref(), Some("/x"));
        assert_eq!(regex_literal("/users"), None);
        assert_eq!(regex_literal("^(a|b)"), None);
        assert_eq!(regex_literal("^/a|/b"), None);
    }
}
