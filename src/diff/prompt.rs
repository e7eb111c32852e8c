//! The prompt both traces ran. `tokens` is the input of a forward, not a stage: it never gets a
//! verdict (so it can never be the first divergence). When both sides carry it, it must be the
//! same, else the two traces are of different forwards and the diff is refused as bad input;
//! when a side lacks it (APRT dumps carry none), the report says that the prompt could not be
//! checked.

use crate::error::{Error, Result};
use crate::trace::io::source::TraceSource;
use crate::trace::stage::{Key, Stage};

use super::ids::integer_ids;
use super::report::Side;

/// Differing positions named in the error before "... and N more".
const SHOWN: usize = 8;

/// The prompt `src` carries: its `tokens` tensor, else the tokens of its metadata.
pub(super) fn tokens_of(src: &dyn TraceSource, side: Side) -> Result<Option<Vec<i64>>> {
    let key = Key::model(Stage::Tokens);
    if let Some(v) = src.get(&key)? {
        let ids = integer_ids(&v, || {
            format!("{} {}: `{key}`", side.name(), src.location())
        })?;
        return Ok(Some(ids.into_iter().map(i64::from).collect()));
    }
    let meta = src.meta();
    Ok((!meta.tokens.is_empty()).then(|| meta.tokens.iter().map(|&t| i64::from(t)).collect()))
}

/// Check that both sides ran the same prompt. `Ok(Some(note))` when a side carries no tokens,
/// an input error naming the differing positions and ids when the prompts differ.
pub(super) fn check(
    reference: &dyn TraceSource,
    candidate: &dyn TraceSource,
) -> Result<Option<String>> {
    let r = tokens_of(reference, Side::Reference)?;
    let c = tokens_of(candidate, Side::Candidate)?;
    let lacking = match (&r, &c) {
        (Some(r), Some(c)) => return same_prompt(r, c, reference, candidate).map(|()| None),
        (Some(_), None) => "the candidate carries no tokens",
        (None, Some(_)) => "the reference carries no tokens",
        (None, None) => "neither side carries tokens",
    };
    Ok(Some(format!(
        "{lacking}, so the two prompts were not checked to be the same (tokens is the prompt, not a stage: it gets no verdict)"
    )))
}

fn same_prompt(
    r: &[i64],
    c: &[i64],
    reference: &dyn TraceSource,
    candidate: &dyn TraceSource,
) -> Result<()> {
    let differ: Vec<usize> = (0..r.len().max(c.len()))
        .filter(|&i| r.get(i) != c.get(i))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let id = |v: &[i64], i: usize| v.get(i).map_or("none".to_string(), |t| t.to_string());
    let mut shown: Vec<String> = differ
        .iter()
        .take(SHOWN)
        .map(|&i| {
            format!(
                "position {i}: reference {}, candidate {}",
                id(r, i),
                id(c, i)
            )
        })
        .collect();
    if differ.len() > SHOWN {
        shown.push(format!("... and {} more", differ.len() - SHOWN));
    }
    Err(Error::input(format!(
        "the traces are of different prompts: reference {} has {} token(s), candidate {} has {}; \
         they differ at {} position(s): {}",
        reference.location(),
        r.len(),
        candidate.location(),
        c.len(),
        differ.len(),
        shown.join("; ")
    )))
}
