//! Numbering the values of string columns (device and metric names, ...)
//! by first appearance, so that the hot paths sort and group integers
//! instead of strings: the scorer's row grouping and the archive's row-group
//! sort and dictionary gather.

use arrow_array::Array;

/// The names of a string column across batches, numbered in order of first
/// appearance: one hash lookup per row (a run of equal names costs one).
pub(crate) struct NumberedNames<'a> {
    /// Per batch, per row.
    pub(crate) ids: Vec<Vec<u32>>,
    pub(crate) distinct: Vec<&'a str>,
}

impl<'a> NumberedNames<'a> {
    /// Each name's rank in byte order, by id.
    pub(crate) fn ranks(&self) -> Vec<u32> {
        let mut by_name: Vec<u32> = (0..self.distinct.len() as u32).collect();
        by_name.sort_unstable_by_key(|&id| self.distinct[id as usize]);
        let mut rank_of = vec![0u32; self.distinct.len()];
        for (rank, id) in by_name.into_iter().enumerate() {
            rank_of[id as usize] = rank as u32;
        }
        rank_of
    }

    pub(crate) fn of(arrays: &[&'a arrow_array::StringArray]) -> Self {
        let mut first_seen: std::collections::HashMap<&str, u32, foldhash::fast::RandomState> =
            std::collections::HashMap::default();
        let mut distinct: Vec<&str> = Vec::new();
        let ids = arrays
            .iter()
            .map(|col| {
                if let Some(only) = single_value(col) {
                    // A batch's model, gateway...: one lookup for the column.
                    let id = *first_seen.entry(only).or_insert_with(|| {
                        distinct.push(only);
                        (distinct.len() - 1) as u32
                    });
                    return vec![id; col.len()];
                }
                let mut ids: Vec<u32> = Vec::with_capacity(col.len());
                for i in 0..col.len() {
                    let name = col.value(i);
                    let id = match ids.last() {
                        Some(&previous) if col.value(i - 1) == name => previous,
                        _ => *first_seen.entry(name).or_insert_with(|| {
                            distinct.push(name);
                            (distinct.len() - 1) as u32
                        }),
                    };
                    ids.push(id);
                }
                ids
            })
            .collect();
        Self { ids, distinct }
    }
}

/// The value every row of `col` holds, if they all hold the same one (and
/// there is a row): equal lengths, and the value bytes repeat with that
/// period, checked with integer compares and one memory compare instead of
/// a string compare per row.
fn single_value(col: &arrow_array::StringArray) -> Option<&str> {
    use arrow_array::Array;
    if col.is_empty() || col.null_count() > 0 {
        return None;
    }
    let offsets = col.value_offsets();
    let len = offsets[1] - offsets[0];
    if offsets.windows(2).any(|w| w[1] - w[0] != len) {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let start = usize::try_from(offsets[0]).ok()?;
    let bytes = &col.value_data()[start..start + len * col.len()];
    (len == 0 || bytes[len..] == bytes[..bytes.len() - len]).then(|| col.value(0))
}

#[cfg(test)]
mod tests {
    use arrow_array::StringArray;

    use super::*;

    #[test]
    fn names_are_numbered_by_first_appearance_across_arrays() {
        let a = StringArray::from(vec!["x", "x", "y", "x"]);
        let constant = StringArray::from(vec!["gw", "gw", "gw"]);
        // Same lengths, different values: not taken for a constant column.
        let same_lengths = StringArray::from(vec!["ab", "ab", "ac", "ab"]);
        let empty = StringArray::from(vec!["", ""]);
        let sliced = StringArray::from(vec!["q", "gw", "gw"]).slice(1, 2);
        let n = NumberedNames::of(&[&a, &constant, &same_lengths, &empty, &sliced]);
        assert_eq!(n.distinct, vec!["x", "y", "gw", "ab", "ac", ""]);
        assert_eq!(
            n.ids,
            vec![
                vec![0, 0, 1, 0],
                vec![2, 2, 2],
                vec![3, 3, 4, 3],
                vec![5, 5],
                vec![2, 2]
            ]
        );
        assert_eq!(single_value(&constant), Some("gw"));
        assert_eq!(single_value(&same_lengths), None);
        assert_eq!(single_value(&sliced), Some("gw"));
        assert_eq!(single_value(&StringArray::from(Vec::<&str>::new())), None);
    }
}
