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

impl PrefixIndex {
    /// Indexes routes by their literal prefixes (`None`: no literal).
    pub(super) fn new<'a>(literals: impl Iterator<Item = Option<&'a str>>) -> PrefixIndex {
        let mut index = PrefixIndex {
            nodes: vec![Node::default()],
            always: Vec::new(),
        };
        for (i, lit) in literals.enumerate() {
            match lit {
                None => index.always.push(i as u32),
                Some(lit) => {
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
