//! Where each key of a contract file sits. yaml_serde gives a location only for errors it raises
//! while parsing; semantic errors found afterwards (an unknown stage, a duplicate id) look their
//! line up here. The index is one pass over yaml-edit's lossless tree, and byte offsets become
//! lines through one table of line starts built once per text (a lookup per key that rescanned
//! the text made lint quadratic: 113 s for a 100,000-token prompt).
//!
//! Paths are dotted, with `[i]` for sequence items: `falsifiers[2].thresholds.logits`,
//! `falsifiers[0].stages[3]`, `models.tiny-moe-f32.path`.

use std::collections::HashMap;
use std::str::FromStr;

use yaml_edit::{Document, Mapping, Sequence, YamlNode};

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

/// Line starts of a text, for turning byte offsets into 1-based lines and columns the way
/// yaml-edit's `byte_offset_to_line_column` does (which builds this table on every call): YAML
/// line breaks (`\n`, `\r`, `\r\n`), columns counted in characters, a byte order mark at the
/// start of a line taking no column.
struct LineTable {
    /// Byte offset of each line's start.
    starts: Vec<usize>,
    /// Byte order marks each line starts with.
    boms: Vec<usize>,
    /// Offsets of the bytes that continue a multi-byte character, so that a column is two
    /// binary searches, not a walk along a (possibly 100,000-item) line.
    continuations: Vec<usize>,
    len: usize,
}

impl LineTable {
    fn new(text: &str) -> LineTable {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        let mut continuations = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
                starts.push(i + 1);
            } else if b & 0xC0 == 0x80 {
                continuations.push(i);
            }
        }
        let boms = starts
            .iter()
            .map(|&s| {
                let line = &text[s..];
                (line.len() - line.trim_start_matches('\u{FEFF}').len()) / '\u{FEFF}'.len_utf8()
            })
            .collect();
        LineTable {
            starts,
            boms,
            continuations,
            len: text.len(),
        }
    }

    /// Position of byte `offset` (past the end: the end; inside a character: after it).
    fn pos(&self, offset: usize) -> Pos {
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let end = offset.clamp(start, self.len);
        // every character before `end` has its first byte there
        let continued = self.continuations.partition_point(|&i| i < end)
            - self.continuations.partition_point(|&i| i < start);
        let chars = end - start - continued;
        Pos {
            line: line + 1,
            column: chars - chars.min(self.boms[line]) + 1,
        }
    }
}

impl LineIndex {
    /// Index a YAML text. A text yaml-edit cannot parse gives an empty index (every lookup then
    /// answers line 1), which only happens when yaml_serde has already reported the syntax error.
    pub fn build(text: &str) -> LineIndex {
        let mut index = LineIndex::default();
        if let Ok(doc) = Document::from_str(text)
            && let Some(root) = doc.as_mapping()
        {
            index.mapping(&LineTable::new(text), "", &root);
        }
        index
    }

    fn pos(text: &LineTable, offset: u32) -> Pos {
        text.pos(offset as usize)
    }

    fn mapping(&mut self, text: &LineTable, prefix: &str, m: &Mapping) {
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

    fn sequence(&mut self, text: &LineTable, prefix: &str, s: &Sequence) {
        for (i, item) in s.values().enumerate() {
            let path = format!("{prefix}[{i}]");
            self.map
                .insert(path.clone(), Self::pos(text, item.byte_range().start));
            self.node(text, &path, &item);
        }
    }

    fn node(&mut self, text: &LineTable, path: &str, node: &YamlNode) {
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

    /// The table answers what yaml-edit's own conversion answers, on every offset of a text with
    /// every kind of line break, multi-byte characters and byte order marks.
    #[test]
    fn line_table_agrees_with_yaml_edit() {
        let text = "\u{FEFF}\u{FEFF}\u{e9}a\u{FEFF}\r\n\u{1F600}b\rc\u{e9}\n\u{FEFF}x: [1, 2]\n";
        let table = LineTable::new(text);
        for offset in 0..=text.len() + 2 {
            let want = yaml_edit::byte_offset_to_line_column(text, offset);
            let got = table.pos(offset);
            assert_eq!(
                (got.line, got.column),
                (want.line, want.column),
                "offset {offset}"
            );
        }
    }

    /// Issue 11 item 18: indexing is linear. 100,000 prompt tokens (one index entry each) took
    /// 113 s when every lookup rebuilt the line table; the bound here is generous (debug builds).
    #[test]
    fn a_long_prompt_indexes_in_linear_time() {
        let n = 100_000;
        let items: Vec<String> = (0..n).map(|i| (i % 250).to_string()).collect();
        let text = format!(
            "falsifiers:\n  - id: X\n    tokens: [{}]\n",
            items.join(", ")
        );
        let start = std::time::Instant::now();
        let ix = LineIndex::build(&text);
        let took = start.elapsed();
        assert_eq!(ix.find(&format!("falsifiers[0].tokens[{}]", n - 1)).line, 3);
        assert!(took.as_secs_f64() < 20.0, "indexing took {took:?}");
    }
}
