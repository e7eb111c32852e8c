//! Where a step's rows sit in the whole prompt's tensor of a stage. Every backend that runs a
//! schedule computes a stage over one step's positions at a time and places those rows into
//! the trace's `[.., T, ..]` tensor; this says once which axis runs over positions and how a
//! whole-tensor index (a planted NaN's) maps into a step.

use crate::trace::stage::Stage;

/// The axis of a stage's tensor that runs over prompt positions: 1 for `attn_probs`
/// `[nh, T, T]` (its rows are queries), 0 for every other stage (`[T, ...]`).
pub fn row_axis(stage: Stage) -> usize {
    usize::from(stage == Stage::AttnProbs)
}

/// A step's tensor of a stage seen as `[outer, rows, inner]`: the product of the dimensions
/// before the row axis, the step's rows, and the product after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRows {
    pub outer: usize,
    pub rows: usize,
    pub inner: usize,
}

impl StepRows {
    /// Split the step's tensor shape `shape` of `stage` around its row axis.
    pub fn of(stage: Stage, shape: &[usize]) -> StepRows {
        let axis = row_axis(stage).min(shape.len().saturating_sub(1));
        StepRows {
            outer: shape[..axis].iter().product(),
            rows: shape.get(axis).copied().unwrap_or(1),
            inner: shape.get(axis + 1..).map_or(1, |s| s.iter().product()),
        }
    }

    /// Values in the step's tensor.
    pub fn len(&self) -> usize {
        self.outer * self.rows * self.inner
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where flat index `index` of the whole prompt's tensor (`t` positions; taken modulo its
    /// size) falls among the step's rows, which start at position `start`, if it does: a NaN
    /// fault hits the same element under every schedule.
    pub fn local_index(&self, t: usize, start: usize, index: usize) -> Option<usize> {
        let total = self.outer * t * self.inner;
        if total == 0 {
            return None;
        }
        let i = index % total;
        let (o, rest) = (i / (t * self.inner), i % (t * self.inner));
        let (row, col) = (rest / self.inner, rest % self.inner);
        let row = row.checked_sub(start).filter(|r| *r < self.rows)?;
        Some((o * self.rows + row) * self.inner + col)
    }

    /// Where the step's row block `o` (of `outer`) starts in the whole prompt's tensor of `t`
    /// positions, for a step starting at position `start`.
    pub fn whole_offset(&self, t: usize, start: usize, o: usize) -> usize {
        (o * t + start) * self.inner
    }
}

/// Copy a step's `[outer, rows, inner]` values into rows `start..start + rows` of the whole
/// prompt's `[outer, t, inner]` tensor.
pub fn place<T: Copy>(full: &mut [T], step: &[T], r: StepRows, t: usize, start: usize) {
    let block = r.rows * r.inner;
    for o in 0..r.outer {
        let src = &step[o * block..][..block];
        full[r.whole_offset(t, start, o)..][..block].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_maps_whole_indices_to_its_own_rows() {
        // attn_probs of a 2-query step at positions 3..5 of T = 6, 2 heads: [2, 2, 6]
        let r = StepRows::of(Stage::AttnProbs, &[2, 2, 6]);
        assert_eq!((r.outer, r.rows, r.inner), (2, 2, 6));
        // whole [2, 6, 6]: head 1, row 4, col 5 = 36 + 24 + 5
        assert_eq!(r.local_index(6, 3, 65), Some((2 + 1) * 6 + 5));
        assert_eq!(
            r.local_index(6, 3, 36 + 2 * 6),
            None,
            "row 2 is another step's"
        );
        assert_eq!(r.local_index(6, 3, 72 + 65), Some(23), "the index wraps");
        // a [T, H] stage: rows 3..5 of [6, 4]
        let r = StepRows::of(Stage::LayerOut, &[2, 4]);
        assert_eq!(r.local_index(6, 3, 3 * 4 + 1), Some(1));
        assert_eq!(r.local_index(6, 3, 5 * 4), None);
        let mut full = vec![0; 24];
        place(&mut full, &[1, 2, 3, 4, 5, 6, 7, 8], r, 6, 3);
        assert_eq!(&full[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(full[..12].iter().chain(&full[20..]).all(|v| *v == 0));
        let empty = StepRows::of(Stage::Logits, &[0, 5]);
        assert!(empty.is_empty());
        assert_eq!(empty.local_index(0, 0, 3), None);
    }
}
