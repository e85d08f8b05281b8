//! The small dense linear algebra the state monitor needs: a symmetric
//! eigen-decomposition (cyclic Jacobi; matrices of a device's metrics, a
//! handful to a few dozen) and a linear solve (LU with partial pivoting;
//! the MSET memory's similarity matrix). Quantiles of the F and normal
//! distributions come from `statrs`.

use statrs::distribution::{ChiSquared, ContinuousCDF, FisherSnedecor, Normal};

/// A square matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Square {
    pub(crate) n: usize,
    pub(crate) a: Vec<f64>,
}

impl Square {
    pub(crate) fn zeros(n: usize) -> Self {
        Self {
            n,
            a: vec![0.0; n * n],
        }
    }

    pub(crate) fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }

    pub(crate) fn set(&mut self, i: usize, j: usize, v: f64) {
        self.a[i * self.n + j] = v;
    }
}

/// Eigenvalues (descending) and unit eigenvectors (`vectors[k]` belongs to
/// `values[k]`) of a symmetric matrix.
pub(crate) fn symmetric_eigen(m: &Square) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = m.n;
    let mut a = m.clone();
    let mut v = Square::zeros(n);
    for i in 0..n {
        v.set(i, i, 1.0);
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a.at(i, j).powi(2))
            .sum();
        let scale: f64 =
            a.a.iter()
                .map(|x| x * x)
                .sum::<f64>()
                .max(f64::MIN_POSITIVE);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.at(p, q);
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a.at(q, q) - a.at(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a.at(k, p), a.at(k, q));
                    a.set(k, p, c * akp - s * akq);
                    a.set(k, q, s * akp + c * akq);
                }
                for k in 0..n {
                    let (apk, aqk) = (a.at(p, k), a.at(q, k));
                    a.set(p, k, c * apk - s * aqk);
                    a.set(q, k, s * apk + c * aqk);
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.at(k, p), v.at(k, q));
                    v.set(k, p, c * vkp - s * vkq);
                    v.set(k, q, s * vkp + c * vkq);
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a.at(j, j).total_cmp(&a.at(i, i)));
    let values = order.iter().map(|&i| a.at(i, i)).collect();
    let vectors = order
        .iter()
        .map(|&i| (0..n).map(|k| v.at(k, i)).collect())
        .collect();
    (values, vectors)
}

/// The inverse of `m` (LU with partial pivoting), or None when singular.
pub(crate) fn inverse(m: &Square) -> Option<Square> {
    let n = m.n;
    let mut a = m.clone();
    let mut inv = Square::zeros(n);
    for i in 0..n {
        inv.set(i, i, 1.0);
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a.at(i, col).abs().total_cmp(&a.at(j, col).abs()))?;
        if a.at(pivot, col).abs() < 1e-300 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.a.swap(pivot * n + k, col * n + k);
                inv.a.swap(pivot * n + k, col * n + k);
            }
        }
        let d = a.at(col, col);
        for k in 0..n {
            a.a[col * n + k] /= d;
            inv.a[col * n + k] /= d;
        }
        for row in 0..n {
            if row == col {
                continue;
            }
            let f = a.at(row, col);
            if f == 0.0 {
                continue;
            }
            for k in 0..n {
                a.a[row * n + k] -= f * a.a[col * n + k];
                inv.a[row * n + k] -= f * inv.a[col * n + k];
            }
        }
    }
    inv.a.iter().all(|x| x.is_finite()).then_some(inv)
}

/// The `p` quantile of the F distribution with `(d1, d2)` degrees of freedom.
pub(crate) fn f_quantile(p: f64, d1: f64, d2: f64) -> Option<f64> {
    FisherSnedecor::new(d1, d2)
        .ok()
        .map(|f| f.inverse_cdf(p))
        .filter(|q| q.is_finite())
}

/// The `p` quantile of the chi-square distribution with `k` degrees of
/// freedom.
pub(crate) fn chi_square_quantile(p: f64, k: f64) -> Option<f64> {
    ChiSquared::new(k)
        .ok()
        .map(|c| c.inverse_cdf(p))
        .filter(|q| q.is_finite())
}

/// The `p` quantile of the standard normal distribution.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    Normal::standard().inverse_cdf(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let mut m = Square::zeros(3);
        let rows = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]];
        for (i, r) in rows.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                m.set(i, j, *v);
            }
        }
        let (values, vectors) = symmetric_eigen(&m);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3)
                    .map(|k| values[k] * vectors[k][i] * vectors[k][j])
                    .sum();
                assert!((r - m.at(i, j)).abs() < 1e-9, "{i},{j}");
            }
        }
    }

    #[test]
    fn inverse_times_matrix_is_identity_and_singular_is_none() {
        let mut m = Square::zeros(3);
        let rows = [[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]];
        for (i, r) in rows.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                m.set(i, j, *v);
            }
        }
        let inv = inverse(&m).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let p: f64 = (0..3).map(|k| m.at(i, k) * inv.at(k, j)).sum();
                assert!((p - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
        assert!(inverse(&Square::zeros(2)).is_none());
    }

    #[test]
    fn quantiles_match_tables() {
        assert!((normal_quantile(0.999) - 3.0902).abs() < 1e-3);
        // F(0.99; 5, 10) = 5.636 (standard tables).
        assert!((f_quantile(0.99, 5.0, 10.0).unwrap() - 5.636).abs() < 1e-2);
        // scipy.stats.chi2.ppf: the far tail the MEWMA chart uses too.
        for (p, k, q) in [
            (1.0 - 1e-7, 8.0, 47.972_464_942_6),
            (0.999, 3.0, 16.266_236_196_2),
            (0.5, 1.0, 0.454_936_423_1),
        ] {
            let got = chi_square_quantile(p, k).unwrap();
            assert!(
                (got - q).abs() < 1e-6 * q,
                "chi2({p}; {k}) = {got}, not {q}"
            );
        }
    }
}
