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
