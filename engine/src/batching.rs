//! Token-budget batching: consecutive items grouped so that a padded batch
//! (longest × count) stays within the budget, and the count within what one decoder call of
//! the backend takes ([`crate::backend::Limits::batch`]). Input order is kept, so output can
//! be written as it comes.

/// Splits `lens` (in order) into ranges of at most `max_items` whose padded size fits
/// `budget`; an item longer than the budget gets a batch of its own.
pub fn batches_by_budget(
    lens: &[usize],
    budget: usize,
    max_items: usize,
) -> Vec<std::ops::Range<usize>> {
    let max_items = max_items.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    for (i, &len) in lens.iter().enumerate() {
        let grown = longest.max(len);
        if i > start && (grown * (i - start + 1) > budget || i - start == max_items) {
            out.push(start..i);
            start = i;
            longest = len;
        } else {
            longest = grown;
        }
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_padded_budget() {
        let any = usize::MAX;
        assert_eq!(
            batches_by_budget(&[10, 10, 10, 10], 30, any),
            vec![0..3, 3..4]
        );
        // 5 then 20: padded 2 × 20 = 40 > 30, so 20 starts a new batch.
        assert_eq!(
            batches_by_budget(&[5, 20, 5], 30, any),
            vec![0..1, 1..2, 2..3]
        );
        assert_eq!(batches_by_budget(&[50, 1], 30, any), vec![0..1, 1..2]);
        assert!(batches_by_budget(&[], 30, any).is_empty());
    }

    #[test]
    fn groups_hold_at_most_what_one_decoder_call_takes() {
        assert_eq!(batches_by_budget(&[1; 5], 100, 2), vec![0..2, 2..4, 4..5]);
        // The budget still splits first where it is the tighter bound.
        assert_eq!(
            batches_by_budget(&[10, 10, 10, 10], 20, 3),
            vec![0..2, 2..4]
        );
    }
}
