//! The match loop's filter: `r^3` of categories four at a time, and which
//! of them could beat the best match so far.
//!
//! The exact test of a category is `r^3 > best` with `r = |x ^ w| / |w|` in
//! `f64` (see [`super::Art::best`]). Testing 256 categories that way costs
//! about 25 instructions a category, most of it one-at-a-time float
//! arithmetic after the byte min-and-sum. Here four categories share it:
//! their four intersections are gathered into one vector and `r^3` is
//! computed in `f32` lanes; the caller compares those with the best match
//! so far lowered by 2^-16 of itself ([`lowered_bar`]). `f32` rounding
//! moves `r^3` by less than 5e-7 of itself, so every category whose exact
//! `r^3` exceeds the bar is kept (a false candidate only costs its exact
//! test), and the caller's result is the scalar loop's, bit for bit.
//! `docs/adr/0007-art-match-filter.md` records why this is hand-written;
//! `tests::the_filtered_scan_finds_what_the_scalar_scan_finds` is the
//! differential test.
//!
//! A category with all-zero weights (`1 / |w|` stored as infinity here)
//! gives `0 * inf = NaN`, which the "not at or below the bar" comparison
//! keeps: its exact test treats its ratio as 1.

use super::Input;

/// The bar a filter compares `r^3` with: `best` lowered by 2^-16 of itself,
/// in `f32` (minus infinity keeps everything).
pub(super) fn lowered_bar(best: f64) -> f32 {
    if best == f64::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        (best * (1.0 - 1.0 / 65536.0)) as f32
    }
}

/// `1 / |w|` as the filter reads it (infinity for all-zero weights).
pub(super) fn filter_scale(inverse_norm: f64) -> f32 {
    if inverse_norm == 0.0 {
        f32::INFINITY
    } else {
        inverse_norm as f32
    }
}

/// Categories per segment of the scan (the `r^3` of a segment are kept on
/// the stack).
pub(super) const SEGMENT: usize = 256;

/// `r^3` in `f32` of each category `w[k]` (scaled by `scale[k]`) into
/// `cubes[k]`, four at a time, then one at a time; the rest of `cubes` is
/// set to minus infinity. Returns the largest (NaN skipped; minus infinity
/// when there is none).
pub(super) fn cubes(x: &Input, w: &[Input], scale: &[f32], cubes: &mut [f32]) -> f32 {
    let whole = w.len() / 4 * 4;
    let mut lanes = [f32::NEG_INFINITY; 4];
    for ((w, scale), out) in w
        .chunks_exact(4)
        .zip(scale.chunks_exact(4))
        .zip(cubes.chunks_exact_mut(4))
    {
        let out: &mut [f32; 4] = out.try_into().expect("4");
        (*out, lanes) = four_cubes(
            x,
            w.try_into().expect("4"),
            scale.try_into().expect("4"),
            lanes,
        );
    }
    let mut largest = lanes.into_iter().fold(f32::NEG_INFINITY, greater);
    for (k, out) in cubes.iter_mut().enumerate().skip(whole) {
        *out = w
            .get(k)
            .map_or(f32::NEG_INFINITY, |w| one_cube(x, w, scale[k]));
        largest = greater(largest, *out);
    }
    largest
}

/// `b` when it is greater than `a`, else `a` (a NaN `b` never is).
fn greater(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// The index of the first `value` in `values` (whole blocks of four).
pub(super) fn position(values: &[f32], value: f32) -> Option<usize> {
    values.chunks_exact(4).enumerate().find_map(|(b, four)| {
        let hits = equal(four.try_into().expect("4"), value);
        (hits != 0).then(|| 4 * b + hits.trailing_zeros() as usize)
    })
}

fn one_cube(x: &Input, w: &Input, scale: f32) -> f32 {
    let r = super::intersection(x, w) as f32 * scale;
    r * r * r
}

/// [`one_cube`] of four categories in SSE2 lanes, and `lanes` raised to
/// them lane by lane (NaN skipped).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn four_cubes(
    x: &Input,
    w: &[Input; 4],
    scale: &[f32; 4],
    lanes: [f32; 4],
) -> ([f32; 4], [f32; 4]) {
    use safe_arch::{
        add_i64_m128i, cast_to_m128_from_m128i, cast_to_m128i_from_m128,
        convert_to_m128_from_i32_m128i, load_unaligned_m128, load_unaligned_m128i, m128, max_m128,
        min_u8_m128i, mul_m128, shuffle_abi_f32_all_m128, sum_of_u8_abs_diff_m128i,
        unpack_high_i64_m128i, unpack_low_i64_m128i, zeroed_m128i,
    };

    let halves = |v: &Input| -> [[u8; 16]; 2] {
        let (a, b) = v.split_at(16);
        [
            a.try_into().expect("16 bytes"),
            b.try_into().expect("16 bytes"),
        ]
    };
    let [x0, x1] = halves(x);
    let (x0, x1) = (load_unaligned_m128i(&x0), load_unaligned_m128i(&x1));
    let zero = zeroed_m128i();
    // Per category: two u64 lanes, each the sum of eight byte minimums.
    let sums = w.each_ref().map(|w| {
        let [w0, w1] = halves(w);
        add_i64_m128i(
            sum_of_u8_abs_diff_m128i(min_u8_m128i(x0, load_unaligned_m128i(&w0)), zero),
            sum_of_u8_abs_diff_m128i(min_u8_m128i(x1, load_unaligned_m128i(&w1)), zero),
        )
    });
    let pair = |a, b| add_i64_m128i(unpack_low_i64_m128i(a, b), unpack_high_i64_m128i(a, b));
    let (ab, cd) = (pair(sums[0], sums[1]), pair(sums[2], sums[3]));
    // The low 32 bits of each u64 lane (a sum is at most 32 * 255).
    let four = shuffle_abi_f32_all_m128::<0b10_00_10_00>(
        cast_to_m128_from_m128i(ab),
        cast_to_m128_from_m128i(cd),
    );
    let intersections = convert_to_m128_from_i32_m128i(cast_to_m128i_from_m128(four));
    let r = mul_m128(intersections, load_unaligned_m128(scale));
    let cubes = mul_m128(mul_m128(r, r), r);
    // `maxps` returns its second operand when the first is NaN.
    let lanes = max_m128(cubes, m128::from_array(lanes));
    (cubes.to_array(), lanes.to_array())
}

/// [`one_cube`] of four categories (compilers vectorise the byte part),
/// and `lanes` raised to them lane by lane (NaN skipped).
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
fn four_cubes(
    x: &Input,
    w: &[Input; 4],
    scale: &[f32; 4],
    lanes: [f32; 4],
) -> ([f32; 4], [f32; 4]) {
    let cubes: [f32; 4] = std::array::from_fn(|j| one_cube(x, &w[j], scale[j]));
    (cubes, std::array::from_fn(|j| greater(lanes[j], cubes[j])))
}

/// Bit `j` set where `!(v[j] <= bar)`: above it, or NaN.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub(super) fn above(v: &[f32; 4], bar: f32) -> u32 {
    use safe_arch::{cmp_nle_mask_m128, load_unaligned_m128, move_mask_m128, set_splat_m128};
    move_mask_m128(cmp_nle_mask_m128(
        load_unaligned_m128(v),
        set_splat_m128(bar),
    )) as u32
}

/// Bit `j` set where `v[j] == value`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn equal(v: &[f32; 4], value: f32) -> u32 {
    use safe_arch::{cmp_eq_mask_m128, load_unaligned_m128, move_mask_m128, set_splat_m128};
    move_mask_m128(cmp_eq_mask_m128(
        load_unaligned_m128(v),
        set_splat_m128(value),
    )) as u32
}

/// Bit `j` set where `!(v[j] <= bar)`: above it, or NaN.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
pub(super) fn above(v: &[f32; 4], bar: f32) -> u32 {
    #[expect(clippy::neg_cmp_op_on_partial_ord, reason = "NaN is kept")]
    let kept = |j: usize| u32::from(!(v[j] <= bar)) << j;
    kept(0) | kept(1) | kept(2) | kept(3)
}

/// Bit `j` set where `v[j] == value`.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
fn equal(v: &[f32; 4], value: f32) -> u32 {
    (0..4).fold(0, |mask, j| mask | (u32::from(v[j] == value) << j))
}
