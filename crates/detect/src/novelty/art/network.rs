//! The fuzzy ART network of one instance: categories (stored as parallel
//! vectors: weights, their reciprocal norms and `f32` scales for the match
//! filter, and each category's cluster and last best step), the two-vigilance
//! presentation, the eviction of the category best longest ago at the cap,
//! and the state snapshot layout of format 1 (a list of categories).

use serde::{Deserialize, Serialize};

use super::{FEATURES, Input, WINDOW, filter, intersection};

/// A category as saved in state snapshots (format 1): its weights, the
/// reciprocals derived from them, its cluster and when it was last best.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Category {
    pub(super) w: Input,
    /// `1 / sum(w)` (0 when the weights are all zero: the ratio is then 1).
    pub(super) inverse_norm: f64,
    /// `1 / (w[newest] + w[newest complement])` (0 when that is zero: E = 1).
    pub(super) inverse_newest: f64,
    pub(super) cluster: u32,
    /// Step at which it was last the best match (eviction picks the oldest).
    pub(super) last_best: u64,
}

/// Index of the newest value in an input, and of its complement.
pub(super) const NEWEST: usize = WINDOW - 1;
pub(super) const NEWEST_COMPLEMENT: usize = NEWEST + FEATURES;

/// `(1 / sum(w), 1 / (w[newest] + w[newest complement]))`, each 0 where
/// its sum is 0.
fn reciprocals(w: &Input) -> (f64, f64) {
    let norm: u32 = w.iter().map(|&v| u32::from(v)).sum();
    let newest = u32::from(w[NEWEST]) + u32::from(w[NEWEST_COMPLEMENT]);
    let inverse = |sum: u32| if sum == 0 { 0.0 } else { 1.0 / f64::from(sum) };
    (inverse(norm), inverse(newest))
}

/// What the match loop does not read about a category.
#[derive(Debug, Clone, Copy)]
struct CategoryInfo {
    inverse_newest: f64,
    cluster: u32,
    last_best: u64,
}

/// What presenting one input did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented {
    /// `M` of the best category (0 for an empty network).
    pub(crate) best_match: f64,
    /// `E` of the best category: how well its newest value matched.
    pub(crate) newest_match: f64,
    pub(crate) new_category: bool,
    pub(crate) new_cluster: bool,
}

/// Fuzzy ART with an upper vigilance (learn into the best category) and a
/// lower one (below it, a new cluster).
///
/// Categories are stored as parallel vectors, what the match loop reads
/// (weights, `1 / sum(w)`) apart from the rest, and scanned four at a time
/// through [`filter`]; saved as one list of [`Category`] (the snapshot
/// layout does not change).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "SavedArt")]
pub(crate) struct Art {
    weights: Vec<Input>,
    inverse_norms: Vec<f64>,
    /// `inverse_norms` as the filter reads them ([`filter::filter_scale`]).
    scales: Vec<f32>,
    info: Vec<CategoryInfo>,
    pub(super) clusters: u32,
    pub(super) steps: u64,
}

/// An [`Art`] as saved.
#[derive(Deserialize)]
struct SavedArt {
    categories: Vec<Category>,
    clusters: u32,
    steps: u64,
}

impl From<SavedArt> for Art {
    fn from(saved: SavedArt) -> Self {
        let mut art = Art {
            clusters: saved.clusters,
            steps: saved.steps,
            ..Art::default()
        };
        for c in saved.categories {
            art.weights.push(c.w);
            art.inverse_norms.push(c.inverse_norm);
            art.scales.push(filter::filter_scale(c.inverse_norm));
            art.info.push(CategoryInfo {
                inverse_newest: c.inverse_newest,
                cluster: c.cluster,
                last_best: c.last_best,
            });
        }
        art
    }
}

impl Serialize for Art {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};

        /// The categories, serialized as the list [`SavedArt`] reads.
        struct Categories<'a>(&'a Art);
        impl Serialize for Categories<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let art = self.0;
                let mut seq = serializer.serialize_seq(Some(art.len()))?;
                for k in 0..art.len() {
                    seq.serialize_element(&art.category(k))?;
                }
                seq.end()
            }
        }

        let mut out = serializer.serialize_struct("Art", 3)?;
        out.serialize_field("categories", &Categories(self))?;
        out.serialize_field("clusters", &self.clusters)?;
        out.serialize_field("steps", &self.steps)?;
        out.end()
    }
}

impl Art {
    pub(super) fn category(&self, k: usize) -> Category {
        let info = self.info[k];
        Category {
            w: self.weights[k],
            inverse_norm: self.inverse_norms[k],
            inverse_newest: info.inverse_newest,
            cluster: info.cluster,
            last_best: info.last_best,
        }
    }

    /// `E` of input `x` for category `k`: how well its newest value matched.
    fn newest_match(&self, k: usize, x: &Input) -> f64 {
        let inverse_newest = self.info[k].inverse_newest;
        if inverse_newest == 0.0 {
            return 1.0;
        }
        let w = &self.weights[k];
        let hit = u32::from(x[NEWEST].min(w[NEWEST]))
            + u32::from(x[NEWEST_COMPLEMENT].min(w[NEWEST_COMPLEMENT]));
        f64::from(hit) * inverse_newest
    }

    /// `(index, M, E)` of the best-matching category (the first of equals),
    /// with `M = r^3 E^2`. Per segment of up to [`filter::SEGMENT`]
    /// categories: `r^3` of each in `f32` ([`filter::cubes`]); the one with
    /// the largest is tested exactly first, which sets a high bar; then, in
    /// order, the exact test of every category whose `r^3` may exceed the bar
    /// ([`filter::lowered_bar`]). `E <= 1`, so the others cannot beat it.
    pub(super) fn best(&self, x: &Input) -> Option<(usize, f64, f64)> {
        let mut best = None;
        let mut best_m = f64::NEG_INFINITY;
        let mut cubes = [f32::NEG_INFINITY; filter::SEGMENT];
        let mut start = 0;
        while start < self.len() {
            let end = (start + filter::SEGMENT).min(self.len());
            // Whole blocks of four (the padding, minus infinity, is never kept).
            let cubes = &mut cubes[..(end - start).div_ceil(4) * 4];
            let largest = filter::cubes(
                x,
                &self.weights[start..end],
                &self.scales[start..end],
                cubes,
            );
            // (None, or the padding, when every ratio is NaN.)
            let seed = filter::position(cubes, largest).filter(|&j| start + j < end);
            if let Some(j) = seed {
                self.consider(start + j, x, &mut best, &mut best_m);
            }
            let mut bar = filter::lowered_bar(best_m);
            for (b, four) in cubes.chunks_exact(4).enumerate() {
                let mut kept = filter::above(four.try_into().expect("4"), bar);
                if let Some(j) = seed
                    && j / 4 == b
                {
                    kept &= !(1 << (j % 4)); // tested already
                }
                while kept != 0 {
                    let j = 4 * b + kept.trailing_zeros() as usize;
                    kept &= kept - 1;
                    if self.consider(start + j, x, &mut best, &mut best_m) {
                        bar = filter::lowered_bar(best_m);
                    }
                }
            }
            start = end;
        }
        best
    }

    /// The exact test of category `k`: it becomes the best when its `M`
    /// exceeds `best_m`, or equals it with a lower index (categories are
    /// not tested in index order). `E <= 1`, so a category whose `r^3` is
    /// below `best_m` cannot (exactly: a product with a factor at most 1
    /// never rounds upward past the other), and its `E` is not computed.
    /// Whether it became the best.
    #[inline]
    fn consider(
        &self,
        k: usize,
        x: &Input,
        best: &mut Option<(usize, f64, f64)>,
        best_m: &mut f64,
    ) -> bool {
        let inverse_norm = self.inverse_norms[k];
        let ratio = if inverse_norm == 0.0 {
            1.0
        } else {
            f64::from(intersection(x, &self.weights[k])) * inverse_norm
        };
        let cube = ratio * ratio * ratio;
        if cube < *best_m {
            return false;
        }
        let e = self.newest_match(k, x);
        let m = cube * e * e;
        let better = m > *best_m || (m == *best_m && best.is_some_and(|(b, _, _)| k < b));
        if better {
            *best_m = m;
            *best = Some((k, m, e));
        }
        better
    }

    /// [`Self::best`] without the filter: every category tested exactly.
    #[cfg(test)]
    pub(super) fn best_unfiltered(&self, x: &Input) -> Option<(usize, f64, f64)> {
        let mut best = None;
        let mut best_m = f64::NEG_INFINITY;
        for k in 0..self.len() {
            self.consider(k, x, &mut best, &mut best_m);
        }
        best
    }

    pub(crate) fn present(
        &mut self,
        x: &Input,
        rho_ub: f64,
        rho_lb: f64,
        max_categories: usize,
    ) -> Presented {
        self.steps += 1;
        let best = self.best(x);
        let (best_match, newest_match) = best.map_or((0.0, 0.0), |(_, m, e)| (m, e));
        let mut out = Presented {
            best_match,
            newest_match,
            new_category: false,
            new_cluster: false,
        };
        match best {
            Some((k, m, _)) if m >= rho_ub => {
                let w = &mut self.weights[k];
                for (w, &v) in w.iter_mut().zip(x) {
                    *w = (*w).min(v);
                }
                let (inverse_norm, inverse_newest) = reciprocals(w);
                self.inverse_norms[k] = inverse_norm;
                self.scales[k] = filter::filter_scale(inverse_norm);
                self.info[k].inverse_newest = inverse_newest;
                self.info[k].last_best = self.steps;
            }
            Some((k, m, _)) if m >= rho_lb => {
                let cluster = self.info[k].cluster;
                self.info[k].last_best = self.steps;
                self.push(*x, cluster, max_categories);
                out.new_category = true;
            }
            _ => {
                let cluster = self.clusters;
                self.clusters = self.clusters.wrapping_add(1);
                self.push(*x, cluster, max_categories);
                out.new_category = true;
                out.new_cluster = true;
            }
        }
        out
    }

    /// Adds a category, evicting the one that was best longest ago when
    /// the network is full.
    pub(super) fn push(&mut self, w: Input, cluster: u32, max_categories: usize) {
        if self.len() >= max_categories.max(1)
            && let Some(oldest) = self
                .info
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_best)
                .map(|(k, _)| k)
        {
            self.weights.swap_remove(oldest);
            self.inverse_norms.swap_remove(oldest);
            self.scales.swap_remove(oldest);
            self.info.swap_remove(oldest);
        }
        let (inverse_norm, inverse_newest) = reciprocals(&w);
        self.weights.push(w);
        self.inverse_norms.push(inverse_norm);
        self.scales.push(filter::filter_scale(inverse_norm));
        self.info.push(CategoryInfo {
            inverse_newest,
            cluster,
            last_best: self.steps,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.weights.len()
    }

    /// Heap bytes held by the categories.
    pub(super) fn approx_bytes(&self) -> usize {
        self.weights.capacity() * std::mem::size_of::<Input>()
            + self.inverse_norms.capacity() * 8
            + self.scales.capacity() * 4
            + self.info.capacity() * std::mem::size_of::<CategoryInfo>()
    }
}
