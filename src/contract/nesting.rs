//! A bound on flow-collection nesting, checked before any YAML parser sees the text.
//!
//! The YAML scanner behind yaml_serde is super-linear in the depth of nested flow collections
//! (`[[[[...]]]]`): depth 100,000 in a 200 KB file did not finish in a minute. A contract needs
//! two or three levels, so a text nesting deeper than [`MAX_FLOW_DEPTH`] is refused by one
//! linear pass over its bytes, at the line and column of the bracket that went too deep.
//!
//! The pass is a small part of a YAML scanner: quoted scalars, comments and block scalars
//! (`|`, `>`) are skipped, and `[` / `{` count as openers where a node may start (anywhere
//! inside a flow collection, where plain scalars cannot hold them). It can only over-count in
//! texts that are not valid YAML anyway, and never needs to be exact below the bound.

/// Deepest flow nesting a contract may have.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Byte offset of the first `[` or `{` that opens a flow collection deeper than `max`.
pub fn too_deep(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let blank = |i: usize| {
        b.get(i)
            .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
    };
    let mut depth = 0usize;
    // whether a node may start here (line start, after `- `, `: `, `[`, `{`, `,`)
    let mut node_start = true;
    let mut line_indent = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' | b'\r' => {
                i += 1;
                line_indent = b[i..].iter().take_while(|&&c| c == b' ').count();
                i += line_indent;
                node_start = true;
                continue;
            }
            b' ' | b'\t' => {}
            b'#' if i == 0 || blank(i - 1) => {
                i = line_end(b, i);
                continue;
            }
            b'"' if node_start => {
                i = quoted_end(b, i, b'"');
                node_start = false;
                continue;
            }
            b'\'' if node_start => {
                i = quoted_end(b, i, b'\'');
                node_start = false;
                continue;
            }
            b'|' | b'>' if node_start && depth == 0 => {
                i = block_scalar_end(b, i, line_indent);
                continue;
            }
            b'[' | b'{' if node_start || depth > 0 => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
                node_start = true;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                node_start = false;
            }
            b',' if depth > 0 => node_start = true,
            b':' | b'?' => node_start = blank(i + 1) || depth > 0,
            b'-' => node_start = depth == 0 && blank(i + 1),
            _ => node_start = false,
        }
        i += 1;
    }
    None
}

/// Offset of the line break ending the line that holds `i` (or the end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map_or(b.len(), |p| i + p)
}

/// Offset just past the quoted scalar opening at `i` (`"` with backslash escapes, `'` with `''`).
fn quoted_end(b: &[u8], i: usize, quote: u8) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quote == b'"' => j += 2,
            c if c == quote => {
                if quote == b'\'' && b.get(j + 1) == Some(&b'\'') {
                    j += 2;
                } else {
                    return j + 1;
                }
            }
            _ => j += 1,
        }
    }
    b.len()
}

/// Offset of the line break after the last line of the block scalar whose indicator is at `i`
/// on a line indented by `indent`: its content is the following lines indented deeper, and
/// blank lines.
fn block_scalar_end(b: &[u8], i: usize, indent: usize) -> usize {
    let mut end = line_end(b, i);
    loop {
        let mut next = end;
        if b.get(next) == Some(&b'\r') {
            next += 1;
        }
        if b.get(next) == Some(&b'\n') {
            next += 1;
        }
        if next >= b.len() || next == end {
            return end;
        }
        let spaces = b[next..].iter().take_while(|&&c| c == b' ').count();
        let after = next + spaces;
        let is_blank = after >= b.len() || matches!(b[after], b'\n' | b'\r');
        if !is_blank && spaces <= indent {
            return end;
        }
        end = line_end(b, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_flow_openers() {
        assert_eq!(too_deep("a: [[1], {b: [2]}]\n", 3), None);
        assert_eq!(too_deep("a: [[1], {b: [2]}]\n", 2), Some(13));
        assert_eq!(too_deep("a: [[[1]]]\n", 2), Some(5));
        // quoted scalars, comments and block scalars hold no openers
        let text =
            "a: \"[[[\\\"[[\"\nb: '[[[''[['\nc: x # [[[[\nd: |\n  [[[[\n   {{{{\n\n  [[\ne: [1]\n";
        assert_eq!(too_deep(text, 1), None);
        // plain scalars in block context may hold brackets; flow ones cannot
        assert_eq!(too_deep("a: b[[[c\nd: don't [[[\n", 1), None);
        assert_eq!(too_deep("- [a, [b, [c]]]\n", 2), Some(10));
        assert_eq!(too_deep("k:\n  - - {a: [1]}\n", 2), None);
    }

    #[test]
    fn deep_nesting_is_found_in_linear_time() {
        let d = 100_000;
        let text = format!("a: {}{}\n", "[".repeat(d), "]".repeat(d));
        let start = std::time::Instant::now();
        assert_eq!(too_deep(&text, MAX_FLOW_DEPTH), Some(3 + MAX_FLOW_DEPTH));
        let text = format!("a: {}\n", "[1, ".repeat(d));
        assert_eq!(
            too_deep(&text, MAX_FLOW_DEPTH),
            Some(3 + 4 * MAX_FLOW_DEPTH)
        );
        assert!(start.elapsed().as_secs_f64() < 5.0);
    }
}
