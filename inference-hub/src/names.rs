//! Numbering the values of string columns (device and metric names, ...)
//! by first appearance, so that the hot paths sort and group integers
//! instead of strings: the scorer's row grouping and the archive's row-group
//! sort and dictionary gather.
//!
//! A string column comes in one of two forms ([`StrColumn`]): plain
//! (`Utf8`, as read from Parquet or built by the multivariate scorer) or
//! keyed (`Dictionary(UInt32, Utf8)`, as the univariate scorer hands its
//! batches on, so that the state and the archive compare and number 4-byte
//! keys instead of strings).

use arrow_array::types::UInt32Type;
use arrow_array::{Array, DictionaryArray, StringArray};

/// A required string column, plain or keyed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StrColumn<'a> {
    Plain(&'a StringArray),
    /// Row `i` holds `values[keys[i]]`.
    Keyed {
        keys: &'a [u32],
        values: &'a StringArray,
    },
}

impl<'a> StrColumn<'a> {
    /// The column, if it is a string column (either form) without nulls.
    pub(crate) fn of(array: &'a dyn Array) -> Option<Self> {
        if array.null_count() > 0 {
            return None;
        }
        if let Some(plain) = array.as_any().downcast_ref::<StringArray>() {
            return Some(Self::Plain(plain));
        }
        let keyed = array
            .as_any()
            .downcast_ref::<DictionaryArray<UInt32Type>>()?;
        let values = keyed.values().as_any().downcast_ref::<StringArray>()?;
        (values.null_count() == 0).then(|| Self::Keyed {
            keys: keyed.keys().values(),
            values,
        })
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Plain(a) => a.len(),
            Self::Keyed { keys, .. } => keys.len(),
        }
    }

    #[inline]
    pub(crate) fn value(&self, i: usize) -> &'a str {
        match self {
            Self::Plain(a) => a.value(i),
            Self::Keyed { keys, values } => values.value(keys[i] as usize),
        }
    }

    /// Whether rows `i` and `j` hold the same string (equal keys settle it
    /// without a string compare).
    #[inline]
    pub(crate) fn same(&self, i: usize, j: usize) -> bool {
        match self {
            Self::Plain(a) => a.value(i) == a.value(j),
            Self::Keyed { keys, values } => {
                keys[i] == keys[j]
                    || values.value(keys[i] as usize) == values.value(keys[j] as usize)
            }
        }
    }
}

/// `batch` with its keyed string columns made plain (`Utf8`).
pub(crate) fn plain_strings(batch: &arrow_array::RecordBatch) -> arrow_array::RecordBatch {
    use std::sync::Arc;
    let (fields, columns): (Vec<arrow_schema::Field>, Vec<arrow_array::ArrayRef>) = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            match column
                .as_any()
                .downcast_ref::<DictionaryArray<UInt32Type>>()
                .filter(|d| d.values().as_any().is::<StringArray>())
            {
                Some(keyed) => (
                    field
                        .as_ref()
                        .clone()
                        .with_data_type(arrow_schema::DataType::Utf8),
                    arrow_select::take::take(keyed.values().as_ref(), keyed.keys(), None)
                        .expect("keys index their values"),
                ),
                None => (field.as_ref().clone(), Arc::clone(column)),
            }
        })
        .unzip();
    let schema = arrow_schema::Schema::new_with_metadata(fields, batch.schema().metadata().clone());
    arrow_array::RecordBatch::try_new(Arc::new(schema), columns)
        .expect("same columns, plain strings")
}

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

    pub(crate) fn of(columns: &[StrColumn<'a>]) -> Self {
        let mut first_seen: std::collections::HashMap<&str, u32, foldhash::fast::RandomState> =
            std::collections::HashMap::default();
        let mut distinct: Vec<&str> = Vec::new();
        let mut number = |name: &'a str| {
            *first_seen.entry(name).or_insert_with(|| {
                distinct.push(name);
                (distinct.len() - 1) as u32
            })
        };
        let ids = columns
            .iter()
            .map(|column| match *column {
                StrColumn::Plain(col) => {
                    if let Some(only) = single_value(col) {
                        // A batch's model, gateway...: one lookup for the column.
                        return vec![number(only); col.len()];
                    }
                    let mut ids: Vec<u32> = Vec::with_capacity(col.len());
                    for i in 0..col.len() {
                        let name = col.value(i);
                        let id = match ids.last() {
                            Some(&previous) if col.value(i - 1) == name => previous,
                            _ => number(name),
                        };
                        ids.push(id);
                    }
                    ids
                }
                StrColumn::Keyed { keys, values } => {
                    // One lookup per value the rows use, then a table.
                    let mut id_of_key = vec![u32::MAX; values.len()];
                    keys.iter()
                        .map(|&key| {
                            let id = &mut id_of_key[key as usize];
                            if *id == u32::MAX {
                                *id = number(values.value(key as usize));
                            }
                            *id
                        })
                        .collect()
                }
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
        let n = NumberedNames::of(
            &[&a, &constant, &same_lengths, &empty, &sliced].map(StrColumn::Plain),
        );
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

    #[test]
    fn keyed_columns_number_like_plain_ones_and_number_only_the_values_they_use() {
        use std::sync::Arc;
        let plain = StringArray::from(vec!["b", "a", "b"]);
        let values = Arc::new(StringArray::from(vec!["unused", "a", "c", "b"]));
        let keyed = DictionaryArray::<UInt32Type>::try_new(
            arrow_array::UInt32Array::from(vec![2, 3, 3, 1, 2]),
            values,
        )
        .unwrap();
        let sliced = keyed.slice(1, 4);
        let column = StrColumn::of(&sliced).expect("a keyed string column");
        assert_eq!(column.len(), 4);
        assert_eq!(
            (0..4).map(|i| column.value(i)).collect::<Vec<_>>(),
            ["b", "b", "a", "c"]
        );
        assert!(column.same(0, 1) && !column.same(1, 2));
        // Equal strings under different keys (a concatenated dictionary).
        let doubled = DictionaryArray::<UInt32Type>::try_new(
            arrow_array::UInt32Array::from(vec![0, 1]),
            Arc::new(StringArray::from(vec!["d", "d"])),
        )
        .unwrap();
        assert!(StrColumn::of(&doubled).unwrap().same(0, 1));
        let plain_again = plain_strings(
            &arrow_array::RecordBatch::try_from_iter([(
                "name",
                Arc::new(sliced.clone()) as arrow_array::ArrayRef,
            )])
            .unwrap(),
        );
        assert_eq!(
            plain_again.schema().field(0).data_type(),
            &arrow_schema::DataType::Utf8
        );
        assert_eq!(
            plain_again
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap(),
            &StringArray::from(vec!["b", "b", "a", "c"])
        );
        let n = NumberedNames::of(&[StrColumn::Plain(&plain), column]);
        assert_eq!(n.distinct, vec!["b", "a", "c"]);
        assert_eq!(n.ids, vec![vec![0, 1, 0], vec![0, 0, 1, 2]]);
        // Not string columns without nulls: not taken.
        assert!(StrColumn::of(&arrow_array::UInt32Array::from(vec![1])).is_none());
        assert!(StrColumn::of(&StringArray::from(vec![Some("x"), None])).is_none());
    }
}
