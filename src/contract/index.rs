//! Where each key of a contract file sits. yaml_serde gives a location only for errors it raises
//! while parsing; semantic errors found afterwards (an unknown stage, a duplicate id) look their
//! line up here. The index is one pass over yaml-edit's lossless tree.
//!
//! Paths are dotted, with `[i]` for sequence items: `falsifiers[2].thresholds.logits`,
//! `falsifiers[0].stages[3]`, `models.tiny-moe-f32.path`.

use std::collections::HashMap;
use std::str::FromStr;

use yaml_edit::{Document, Mapping, Sequence, YamlNode, byte_offset_to_line_column};

/// 1-based line and column.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Path -> position of the key (for mapping entries) or of the item (for sequence items).
#[derive(Clone, Debug, Default)]
pub struct LineIndex {
    map: HashMap<String, Pos>,
}

impl LineIndex {
    /// Index a YAML text. A text yaml-edit cannot parse gives an empty index (every lookup then
    /// answers line 1), which only happens when yaml_serde has already reported the syntax error.
    pub fn build(text: &str) -> LineIndex {
        let mut index = LineIndex::default();
        if let Ok(doc) = Document::from_str(text)
            && let Some(root) = doc.as_mapping()
        {
            index.mapping(text, "", &root);
        }
        index
    }

    fn pos(text: &str, offset: u32) -> Pos {
        let lc = byte_offset_to_line_column(text, offset as usize);
        Pos {
            line: lc.line,
            column: lc.column,
        }
    }

    fn mapping(&mut self, text: &str, prefix: &str, m: &Mapping) {
        for entry in m.entries() {
            let Some(key) = entry.key_node() else {
                continue;
            };
            let name = match key.as_scalar() {
                Some(s) => s.as_string(),
                None => continue,
            };
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            // First occurrence wins: a duplicate key is reported by yaml_serde itself.
            self.map
                .entry(path.clone())
                .or_insert_with(|| Self::pos(text, key.byte_range().start));
            if let Some(v) = entry.value_node() {
                self.node(text, &path, &v);
            }
        }
    }

    fn sequence(&mut self, text: &str, prefix: &str, s: &Sequence) {
        for (i, item) in s.values().enumerate() {
            let path = format!("{prefix}[{i}]");
            self.map
                .insert(path.clone(), Self::pos(text, item.byte_range().start));
            self.node(text, &path, &item);
        }
    }

    fn node(&mut self, text: &str, path: &str, node: &YamlNode) {
        match node {
            YamlNode::Mapping(m) => self.mapping(text, path, m),
            YamlNode::Sequence(s) => self.sequence(text, path, s),
            _ => {}
        }
    }

    /// Position of `path`, or of its nearest indexed ancestor (a key yaml-edit did not see still
    /// gets the line of the entry that holds it).
    pub fn find(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => {
                    return Pos { line: 1, column: 1 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "# c\na: 1\nfalsifiers:\n  - id: X\n    stages: [q_proj, logits]\n    thresholds: { default: 0.1 }\n  - id: Y\n";
        let ix = LineIndex::build(text);
        assert_eq!(ix.find("a").line, 2);
        assert_eq!(ix.find("falsifiers").line, 3);
        assert_eq!(ix.find("falsifiers[0]").line, 4);
        assert_eq!(ix.find("falsifiers[0].stages").line, 5);
        assert_eq!(
            ix.find("falsifiers[0].stages[1]"),
            Pos {
                line: 5,
                column: 22
            }
        );
        assert_eq!(ix.find("falsifiers[0].thresholds.default").line, 6);
        assert_eq!(ix.find("falsifiers[1].id").line, 7);
        // unknown leaf: nearest ancestor
        assert_eq!(ix.find("falsifiers[1].nope").line, 7);
        assert_eq!(ix.find("nothing").line, 1);
    }
}
